"""Launch the 2-process worker once per session and hand its results to the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: what a worker prints when the machine, not the code under test, stopped it: another job took
#: the free port before the worker bound it, or a rank was killed by a signal (seen once, a
#: SIGABRT of gloo's rank 0 on a loaded shared machine, not reproduced in 7 reruns)
TRANSIENT = ("ddress already in use", "terminated with signal")


def run_worker(module: str, out: Path) -> dict:
    """Run ``python -m module --out out --port PORT`` (2 gloo processes) with this checkout's
    package first on the path; return rank 0's ``out/results.pt``. A worker stopped by the
    machine (``TRANSIENT``) runs once more on a new port; any other failure, or a second one,
    raises with both runs' output."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    # src first: a worktree tests its own package, not an editable install of another checkout
    pythonpath = os.pathsep.join([str(REPO / "src"), str(REPO)])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    cmd = [sys.executable, "-m", module, "--out", str(out)]
    failures = []
    for _attempt in range(2):
        proc = subprocess.run([*cmd, "--port", str(free_port())], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
        if proc.returncode == 0:
            return torch.load(out / "results.pt", weights_only=False)
        failures.append(f"worker failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        if not any(sign in proc.stderr + proc.stdout for sign in TRANSIENT):
            break
    raise AssertionError("\n\n".join(failures))


def save_one_process_checkpoint(path: Path) -> None:
    """The 1-process side of the 1 -> 2 reshard: plain model, 2 steps, DCP save (no group)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from tests.distributed import common

    model = common.make_model()
    opt = common.make_optimizer(model, foreach=True)
    common.train(model, opt, common.batches()[:2])
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(path))


def save_one_process_reshard(out: Path) -> None:
    """The 1-process side of the low-bit 1 -> 2 reshard: each ``RESHARD`` config after 2 steps,
    saved with DCP, and its state (the test's reference) with torch.save."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from tests.distributed import common

    for name in common.RESHARD:
        model, opt = common.reshard_reference(name, 2)
        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(out / f"ckpt_{name}_1proc"))
        torch.save({"weights": common.weights(model),
                    "state": {n: {k: v.clone() for k, v in opt.state[p].items()}
                              for n, p in model.named_parameters()}},
                   out / f"{name}_1proc.pt")


@pytest.fixture(scope="session")
def dist_results(tmp_path_factory) -> dict:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    out = tmp_path_factory.mktemp("dist")
    save_one_process_checkpoint(out / "ckpt_1proc")
    save_one_process_reshard(out)
    results = run_worker("tests.distributed.worker", out)
    results["out"] = out
    return results
