"""examples/torchrun_train.py under ``torchrun --nproc_per_node 2`` (gloo, CPU) equals 1 process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.integrations.conftest import EXAMPLES, load_example

STEPS = 8


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_torchrun_two_processes_match_one(mode, tmp_path: Path):
    out = tmp_path / "weights.pt"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(EXAMPLES / "torchrun_train.py"), "--steps", str(STEPS), "--out", str(out),
    ]
    if mode == "fsdp":
        cmd.append("--fsdp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = torch.load(out)
    want = load_example("torchrun_train").train(STEPS)
    assert got.keys() == want.keys()
    initial = load_example("torchrun_train").make_model().state_dict()
    assert any(not torch.equal(want[n], initial[n]) for n in want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-5, msg=name)
