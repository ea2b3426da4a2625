"""The wrapper under FSDP2 (2 gloo processes, DTensor parameters): equal to one process, the
threshold from the whole tensor with one all-reduce per step, and a DCP save/load that resumes
exactly. One spawned job runs every check (``tests/decay/fsdp_worker.py``)."""

from __future__ import annotations

import pytest
import torch

from tests.decay.fsdp_configs import CONFIGS, make_optimizer
from tests.distributed import common
from tests.distributed.conftest import run_worker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    return run_worker("tests.decay.fsdp_worker", tmp_path_factory.mktemp("wrapper_fsdp"))


def one_process(name: str):
    model = common.make_model()
    opt = make_optimizer(name, model)
    common.train(model, opt, common.batches())
    return model, opt


def assert_close_dicts(got: dict, want: dict) -> None:
    assert got.keys() == want.keys() and want
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fsdp2_equals_one_process(results, name):
    model, opt = one_process(name)
    assert_close_dicts(results[name]["weights"], common.weights(model))
    assert_close_dicts(results[name]["delta_mu"], common.state_by_name(model, opt, "delta_mu"))


def test_one_all_reduce_per_step_for_the_decayed_group(results):
    """The whole-tensor mean|p| of all decayed (sharded) weights costs one small all-reduce;
    the exempt bias group none; nothing is gathered."""
    for name in CONFIGS:
        counts = results[name]["comm_counts"]
        assert all(c == {"c10d.allreduce_": 1} for c in counts), (name, counts)


def test_dcp_save_load_resumes_exactly(results):
    got = results["dcp"]
    for key, value in got["continued"].items():
        assert torch.equal(got["resumed"][key], value), key
    assert set(got["loaded_mu_dtypes"].values()) == {"torch.float32"}
