"""Build and load the fused CPU kernel (``adamhd_cpu.cpp``) with ``torch.utils.cpp_extension``.

The extension is compiled on first use (about a minute on 2 cores) and cached by torch under
``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``). Its name carries a hash of the
source, the flags, the CPU's vector capability, the torch version and the build environment (the
interpreter's prefix and version, the Python and torch include paths, the compiler), so a cache
shared between machines never serves a binary built for another instruction set, and two
environments sharing it keep two entries instead of rebuilding one in turn.

``load()`` returns the module or ``None``; ``build_error()`` says why it is ``None`` (no C++
compiler, ``ADAMHD_NO_EXTENSION=1``, a failed build). Nothing here raises at import time.

A build killed half-way (Ctrl-C, kill -9, a job's time limit) leaves torch's ``lock`` file in the
build folder, and torch's next build waits for it forever. Every build here first takes an OS
lock (``flock``) on ``adamhd.flock`` in that folder, which the OS frees when its holder dies:
whoever holds it is the only builder, so a ``lock`` file found then is stale and is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sys
import sysconfig
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

SOURCE = Path(__file__).with_name("adamhd_cpu.cpp")
log = logging.getLogger(__name__)

_lock = threading.Lock()
_module: ModuleType | None = None
_error: str | None = None
_tried = False


def _vector_flags() -> list[str]:
    """Compiler flags for the at::vec width this CPU supports (as torch itself detected it)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ("AVX512", "AVX512_BF16", "AVX512_VNNI", "AVX512_FP16", "AMX"):
        return [
            "-DCPU_CAPABILITY_AVX512",
            "-mavx512f",
            "-mavx512bw",
            "-mavx512vl",
            "-mavx512dq",
            "-mfma",
            "-mf16c",
        ]
    if capability == "AVX2":
        return ["-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"]
    return []


def _flags() -> list[str]:
    # -ffp-contract=off: no FMA contraction, so results round like the unfused reference ops.
    return ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", *_vector_flags()]


def _build_environment() -> list[str]:
    """What else enters the build command: the interpreter (prefix, version), the Python and torch
    include paths, torch's location (its library path) and the compiler. Two environments
    sharing one cache must not share an entry: torch would rebuild it each time they alternate."""
    from torch.utils import cpp_extension

    return [
        sys.prefix,
        sys.version,
        sysconfig.get_paths()["include"],
        *cpp_extension.include_paths(),
        str(Path(torch.__file__).parent),
        _compiler() or "",
    ]


def extension_name() -> str:
    digest = hashlib.sha1(SOURCE.read_bytes())
    digest.update(" ".join(_flags()).encode())
    digest.update(torch.__version__.encode())
    digest.update("\0".join(_build_environment()).encode())
    capability = torch.backends.cpu.get_cpu_capability().lower()
    return f"adamhd_cpu_{capability}_{digest.hexdigest()[:12]}"


def _compiler() -> str | None:
    cxx = os.environ.get("CXX", "c++")
    return shutil.which(cxx) or shutil.which("g++") or shutil.which("clang++")


def load(verbose: bool = False) -> ModuleType | None:
    """The compiled extension, building it on first call; ``None`` if it cannot be had.

    Once tried, this is one global read, which ``torch.compile`` traces without a graph break;
    the first try (hashing the source, a lock, the build or the cached ``.so``,
    ``register_fake``) runs outside any traced region (``torch.compiler.disable``).
    ``AdamHD`` calls it at construction, so a compiled step in a fresh process finds it loaded."""
    if _tried:
        return _module
    return _first_load(verbose)


@torch.compiler.disable
def _first_load(verbose: bool) -> ModuleType | None:
    global _module, _error, _tried
    with _lock:
        if _tried:
            return _module
        try:
            _module = _build(verbose)
            if _module is not None:
                _register_fake()
        except Exception as exc:  # a failed build must never break the optimizer
            _module = None
            first = str(exc).strip().splitlines()
            _error = f"building the fused CPU kernel failed: {first[-1] if first else exc!r}"
        _tried = True
    return _module


def _register_fake() -> None:
    """Shapes-only implementation of ``adamhd::fused_step_`` for ``torch.compile`` (it returns
    nothing and only mutates its inputs)."""

    @torch.library.register_fake("adamhd::fused_step_")
    def _fake(*args, **kwargs) -> None:
        return None

    @torch.library.register_fake("adamhd::decay_")
    def _fake_decay(*args, **kwargs) -> None:
        return None

    @torch.library.register_fake("adamhd::fused_lowbit_step_")
    def _fake_lowbit(*args, **kwargs) -> None:
        return None


def _build(verbose: bool) -> ModuleType | None:
    global _error
    if os.environ.get("ADAMHD_NO_EXTENSION", "") not in ("", "0"):
        _error = "the fused CPU kernel is disabled by ADAMHD_NO_EXTENSION"
        return None
    if _compiler() is None:
        _error = (
            "the fused CPU kernel needs a C++ compiler (g++ or clang++, or CXX) to build on "
            "first use, and none was found"
        )
        return None
    from torch.utils import cpp_extension

    name = extension_name()
    built = Path(cpp_extension._get_build_directory(name, False)) / f"{name}.so"
    if not built.exists():
        log.warning(
            "adamhd: building the fused CPU kernel (first use, about a minute; cached in %s; "
            "ADAMHD_FUSED_DEFAULT=0 skips it)", built.parent
        )
    with sole_builder(built.parent):
        return cpp_extension.load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=_flags(),
            extra_ldflags=["-fopenmp"],
            verbose=verbose,
        )


@contextlib.contextmanager
def sole_builder(folder: Path) -> Iterator[None]:
    """Hold the OS lock on ``folder/adamhd.flock`` (waiting for another process's build), and
    remove a stale torch ``lock`` file left by a build that was killed."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): torch's own lock only
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "adamhd.flock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        stale = folder / "lock"
        if stale.exists():
            log.warning("adamhd: removing %s, left by a kernel build that was killed", stale)
            stale.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def loaded() -> ModuleType | None:
    """The extension if it was already loaded, without building it."""
    return _module


def build_error() -> str | None:
    """Why ``load()`` returned ``None`` (after it was called), else ``None``."""
    return _error if _module is None else None


def available() -> bool:
    return load() is not None


def _reset_for_tests(error: str | None = None) -> None:
    """Forget the loaded module; with ``error``, pretend the build failed with that message."""
    global _module, _error, _tried
    with _lock:
        _module = None
        _error = error
        _tried = error is not None
    from adamhd import kernels

    kernels.forget_plans()
