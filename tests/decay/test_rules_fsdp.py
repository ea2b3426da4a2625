"""Stable Weight Decay, CPR and the update bound under FSDP2 (2 gloo processes, DTensor
parameters split unevenly by rows): equal to one process (the global mean of v_hat, each tensor's
mean(p^2), each matrix's sigma1 are whole-tensor statistics), with the collectives counted, and a
DCP save/load that resumes exactly (``rules_fsdp_worker.py``)."""

from __future__ import annotations

import pytest
import torch

from tests.decay.rules_fsdp_worker import BOUND, CONFIGS, STATE_KEYS, make_optimizer
from tests.distributed import common
from tests.distributed.conftest import run_worker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    return run_worker("tests.decay.rules_fsdp_worker", tmp_path_factory.mktemp("rules_fsdp"))


@pytest.mark.parametrize("name", [*CONFIGS, BOUND])
def test_fsdp2_equals_one_process(results, name):
    model = common.make_model()
    opt = make_optimizer(name, model)
    common.train(model, opt, common.batches())
    want = common.weights(model)
    got = results[name]["weights"]
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    for key in STATE_KEYS:
        state = common.state_by_name(model, opt, key)
        assert results[name]["state"][key].keys() == state.keys()
        for n in state:
            torch.testing.assert_close(results[name]["state"][key][n], state[n], rtol=1e-5,
                                       atol=1e-7, msg=f"{key} {n}")
    if name.startswith("cpr"):
        assert max(float(v) for v in results[name]["state"]["cpr_lambda"].values()) > 0
    if name == BOUND:  # the bound acted: some step's ratio was above the threshold
        assert max(float(v) for v in results[name]["state"]["bound_ratio"].values()) > 0.05


def test_one_all_reduce_per_step(results):
    """The global mean of v_hat (SWD) and mean(p^2) of every decayed tensor (CPR): one small
    all-reduce each step; CPR's dependent kappa adds one at the first step; nothing gathered."""
    one = {"c10d.allreduce_": 1}
    for name in ("stable_l2", "stable_huber_cautious", "cpr_uniform"):
        assert all(c == one for c in results[name]["comm_counts"]), name
    # the bound: 2 power iterations on W and dW of both matrices, 2 all-reduces each
    assert all(c == {"c10d.allreduce_": 4} for c in results[BOUND]["comm_counts"])
    dependent = results["cpr_dependent_cautious"]["comm_counts"]
    assert dependent[0] == {"c10d.allreduce_": 2} and all(c == one for c in dependent[1:])


def test_dcp_save_load_resumes_exactly(results):
    got = results["dcp"]
    for key, value in got["continued"].items():
        assert torch.equal(got["resumed"][key], value), key
