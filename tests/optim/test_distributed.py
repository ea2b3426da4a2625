"""FSDP2 on 2 gloo processes equals 1 process (one spawned job for all checks)."""

from __future__ import annotations

import pytest
import torch

from tests.distributed import common
from tests.distributed.conftest import run_worker
from tests.optim.dist_configs import CONFIGS, SURVEY, SURVEY_DCP, reference


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    return run_worker("tests.optim.dist_worker", tmp_path_factory.mktemp("optim_dist"))


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


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SURVEY))
def test_factored_optimizers_fsdp2_equal_one_process(results, name):
    """Adafactor, SM3 and SMMF (loop and foreach paths) on unevenly sharded weights: the
    weights, the factors (gathered) and SMMF's signs equal single-process training."""
    from adamhd.optim.smmf import unpack_signs

    model, opt = reference(name)
    got = results["survey"][name]
    want = common.weights(model)
    for n in want:
        torch.testing.assert_close(got["weights"][n], want[n], rtol=1e-5, atol=1e-6, msg=n)
    keys = {k for s in opt.state.values() for k in s} - {"sign"}
    assert set(got["state"]) == keys, (set(got["state"]), keys)
    for key in keys:
        expected = common.state_by_name(model, opt, key)
        assert got["state"][key].keys() == expected.keys(), key
        for n in expected:
            torch.testing.assert_close(got["state"][key][n], expected[n], rtol=1e-5, atol=1e-6,
                                       msg=f"{key} {n}")
    if name.startswith("smmf"):
        for n, p in model.named_parameters():
            assert torch.equal(got["signs"][n], unpack_signs(opt.state[p]["sign"], p.numel())), n


@pytest.mark.slow
def test_factored_optimizers_collectives_per_step(results):
    """All-reduces only, never a gather; the foreach paths batch each statistic kind over the
    group: Adafactor 3 for the weights (column sums, mean(R), the two RMS) + 1 for the biases
    (RMS only), SM3 1 (slice maxima of the weights; biases are elementwise), SMMF 1 per group."""
    per_step = {"adafactor_foreach": 4, "adafactor_fixed_foreach": 4, "sm3_foreach": 1,
                "smmf_foreach": 2}
    for name in SURVEY:
        counts = results["survey"][name]["comm_counts"]
        assert all(set(c) == {"c10d.allreduce_"} for c in counts), (name, counts)
        if name in per_step:
            assert all(c["c10d.allreduce_"] == per_step[name] for c in counts), (name, counts)


@pytest.mark.slow
@pytest.mark.parametrize("name", SURVEY_DCP)
def test_factored_optimizers_dcp_resume_equals_uninterrupted(results, name):
    """Saved with torch.distributed.checkpoint after 2 steps by 2 ranks, loaded into a fresh
    model and optimizer, 2 more steps: the weights and the state of the run without a break
    (Adafactor's and SM3's factors are DTensors; SMMF's per-rank signs are not resharded)."""
    got, want = results["survey_dcp"][name], results["survey"][name]
    for n in want["weights"]:
        torch.testing.assert_close(got["weights"][n], want["weights"][n], rtol=0, atol=0, msg=n)
    for key, per_param in want["state"].items():
        for n in per_param:
            torch.testing.assert_close(got["state"][key][n], per_param[n], rtol=0, atol=0)
