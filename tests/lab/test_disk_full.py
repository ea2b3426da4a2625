"""A full disk during a checkpoint write, simulated without root: the checkpoint's temporary file
is made a symlink to /dev/full, where every write fails with ENOSPC (as on a full filesystem).
The user gets one error line naming the folder and "no space left", no checkpoint.tmp is left,
the previous checkpoint is intact, and a later --resume with space continues."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from adamhd import cli
from adamhd.lab.train import save_checkpoint
from tests.lab.test_cli import tiny_args

pytestmark = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")


def fill_disk_for(path: Path) -> None:
    """The next write of `path`'s temporary file hits ENOSPC."""
    os.symlink("/dev/full", path.with_suffix(".tmp"))


def test_save_checkpoint_on_a_full_disk_keeps_the_previous_one(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "w": torch.arange(5.0)})
    before = path.read_bytes()
    fill_disk_for(path)
    with pytest.raises(OSError, match="no space left") as exc:
        save_checkpoint(path, {"step": 2, "w": torch.zeros(10_000)})
    assert exc.value.filename == str(tmp_path)
    assert not os.path.lexists(path.with_suffix(".tmp"))
    assert path.read_bytes() == before


def test_compare_on_a_full_disk_says_so_in_one_line_and_resumes(tmp_path, works_dir,
                                                                 other_domain, capsys):
    out = tmp_path / "out"
    args = tiny_args(out, works_dir, other_domain, "--optimizers", "adamw")
    args[args.index("--seeds") + 1] = "1"
    args[args.index("--steps") + 1] = "4"  # checkpoints at steps 2 and 4 (eval every 2)
    run = out / "runs" / "adamw" / "seed0"
    run.mkdir(parents=True)
    fill_disk_for(run / "checkpoint.pt")
    with pytest.raises(SystemExit) as exc:
        cli.main(args + ["--resume"])  # --resume: keep the prepared folder
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"adamhd compare: error: {run}: no space left"), err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not os.path.lexists(run / "checkpoint.tmp")
    assert not (run / "checkpoint.pt").exists()
    assert cli.main(args + ["--resume"]) == 0  # space again: the run starts over and finishes
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]
