"""A kernel build killed half-way leaves torch's ``lock`` file behind; the next build must not
wait for it forever (``adamhd.kernels.cpu.sole_builder``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from adamhd.kernels.cpu import sole_builder

fcntl = pytest.importorskip("fcntl")


def test_a_stale_torch_lock_is_removed_once_the_os_lock_is_held(tmp_path):
    (tmp_path / "lock").touch()  # what a killed build leaves
    with sole_builder(tmp_path):
        assert not (tmp_path / "lock").exists()
    assert (tmp_path / "adamhd.flock").exists()


def test_the_os_lock_excludes_another_process_and_is_freed_on_exit(tmp_path):
    probe = textwrap.dedent(f"""
        import fcntl, os
        fd = os.open({str(tmp_path / "adamhd.flock")!r}, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            print("free")
        except BlockingIOError:
            print("held")
    """)

    def other_process_sees() -> str:
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              check=True).stdout.strip()

    with sole_builder(tmp_path):
        (tmp_path / "lock").touch()  # a live build of the holder: left alone while held
        assert other_process_sees() == "held"
        assert (tmp_path / "lock").exists()
    assert other_process_sees() == "free"


def test_a_killed_holder_frees_the_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from adamhd.kernels.cpu import sole_builder
            with sole_builder(Path({str(tmp_path)!r})):
                Path({str(tmp_path / "lock")!r}).touch()
                print("building", flush=True)
                time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "building"
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "lock").exists()  # what torch's next build would wait for forever
    with sole_builder(tmp_path):
        assert not (tmp_path / "lock").exists()
