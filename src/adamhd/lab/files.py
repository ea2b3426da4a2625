"""Reading the lab's own files with errors that name the file (and the line) at fault, and the
lock that keeps two commands from writing into one output folder at once."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock (say so in docs/lab.md)
    fcntl = None


class LabFileError(ValueError):
    """A lab file that cannot be used: unreadable, malformed, or missing a key."""


class LockError(RuntimeError):
    """The output folder is in use by another command."""


def read_json(path: Path, required: tuple[str, ...] = ()) -> dict:
    """The JSON object in `path`; every key of `required` must be present."""
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabFileError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    return _checked(data, required, str(path),
                    "; it was written by another version, or edited")


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict]:
    """One JSON object per non-blank line of `path`, each with the `required` keys."""
    rows = []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LabFileError(f"{path}: line {number}: not valid JSON ({exc.msg})") from None
        rows.append(_checked(row, required, f"{path}: line {number}"))
    return rows


def _read_text(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise LabFileError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise LabFileError(f"{path}: not UTF-8 text") from None


def _checked(data, required: tuple[str, ...], where: str, hint: str = "") -> dict:
    """`data` if it is a JSON object with every `required` key; else an error naming `where`."""
    if not isinstance(data, dict):
        raise LabFileError(f"{where}: expected a JSON object, found {type(data).__name__}")
    missing = [k for k in required if k not in data]
    if missing:
        raise LabFileError(f"{where}: missing key(s) {', '.join(map(repr, missing))}{hint}")
    return data


def check_writable_dir(path: str | Path, option: str) -> Path:
    """`path` is (or can be created as) a writable folder; nothing is created here."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise LabFileError(f"{option} {path}: is a file, not a folder")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise LabFileError(f"{option} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise LabFileError(f"{option} {path}: {probe} is not writable")
    return p


def check_out_dirs(out: str | Path, cache_dir: str | None) -> Path:
    """`--out` and (if given) `--cache-dir` can be written; returns --out's path."""
    out = check_writable_dir(out, "--out")
    if cache_dir:
        check_writable_dir(cache_dir, "--cache-dir")
    return out


def _holder() -> str:
    command = " ".join(["adamhd", *sys.argv[1:]])[:200]
    return (f"pid {os.getpid()} on host {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')} ({command})")


@contextlib.contextmanager
def locked(folder: Path, name: str = ".lock"):
    """Hold an exclusive lock on `folder` (created if needed) for the duration.

    A second command on the same folder fails at once, naming the holder (pid, host, start,
    command). The lock is an OS file lock (flock): it is released when its holder exits, even
    when killed, so a stale lock file never blocks anyone.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    f = open(folder / name, "a+", encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise LockError(f"{folder} is in use by {holder}; wait for it to finish, or use "
                            "another --out") from None
        f.seek(0)
        f.truncate()
        f.write(_holder() + "\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)
    finally:
        f.close()
