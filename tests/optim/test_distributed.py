"""FSDP2 on 2 gloo processes equals 1 process (one spawned job for all checks)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from tests.distributed import common
from tests.distributed.conftest import REPO, TIMEOUT_S, free_port
from tests.optim.dist_configs import CONFIGS, reference


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    out = tmp_path_factory.mktemp("optim_dist")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
    cmd = [sys.executable, "-m", "tests.optim.dist_worker", "--out", str(out),
           "--port", str(free_port())]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    if proc.returncode != 0:
        raise AssertionError(f"worker failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return torch.load(out / "results.pt", weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fsdp2_equals_one_process(results, name):
    model, opt = reference(name)
    got = results[name]
    want = common.weights(model)
    for n in want:
        torch.testing.assert_close(got["weights"][n], want[n], rtol=1e-5, atol=1e-6, msg=n)
    for key, per_param in got["state"].items():
        expected = common.state_by_name(model, opt, key)
        for n in expected:
            torch.testing.assert_close(per_param[n], expected[n], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_nsgda_one_all_reduce_per_step(results):
    for name in ("nsgda_foreach", "nsgda_loop"):
        # both groups' norms (weights with decay, biases without) share one all-reduce
        assert all(c == {"c10d.allreduce_": 1} for c in results[name]["comm_counts"]), name
    for name in ("adalo", "adamomentum"):  # elementwise: no collective
        assert all(c == {} for c in results[name]["comm_counts"]), name
    # Amos: every tensor's mean(g^2) in one all-reduce
    assert all(c == {"c10d.allreduce_": 1} for c in results["amos_cautious"]["comm_counts"])
    # wrapped with adaptive Huber decay: one more for the threshold's mean|p| (decayed group)
    assert all(c == {"c10d.allreduce_": 2} for c in results["nsgda_huber"]["comm_counts"][1:])
    # native adaptive Huber decay: the same, the threshold's mean|p| from the first step on
    assert all(c == {"c10d.allreduce_": 2} for c in results["nsgda_native_huber"]["comm_counts"])


@pytest.mark.slow
def test_factored_optimizers_refuse_sharded_params(results):
    for name, message in results["refusals"].items():
        assert "DTensor" in message and name in message, (name, message)
