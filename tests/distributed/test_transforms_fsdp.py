"""FSDP2 on 2 processes equals 1 process for every gradient transform and for Lookahead; the
transforms take one all-reduce per step (none for centralisation). One spawned job for all."""

from __future__ import annotations

import pytest
import torch

from adamhd.transforms import TRANSFORMS
from tests.distributed import common
from tests.distributed import transforms_common as tc
from tests.distributed.conftest import run_worker

pytestmark = pytest.mark.slow
ATOL = 1e-6


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("transforms_dist")
    return run_worker("tests.distributed.transforms_worker", out)


def assert_close_dicts(got: dict, want: dict, exact: bool = False) -> None:
    assert got.keys() == want.keys() and want
    for name in want:
        if exact:
            assert torch.equal(got[name], want[name]), name
        else:
            torch.testing.assert_close(got[name], want[name], atol=ATOL, rtol=1e-5, msg=name)


@pytest.mark.parametrize("case", list(tc.TRANSFORM_CASES))
def test_transform_matches_single_process(results, case):
    want = common.weights(tc.reference_transform(case))
    assert_close_dicts(results["transforms"][case]["weights"], want)
    plain = common.weights(tc.reference_transform(None))
    assert any(not torch.allclose(want[n], plain[n], atol=1e-4) for n in want), "no effect"


@pytest.mark.parametrize("case", list(tc.TRANSFORM_CASES))
def test_one_all_reduce_per_step(results, case):
    expected = {"c10d.allreduce_": tc.ALL_REDUCES[case]} if tc.ALL_REDUCES[case] else {}
    assert results["transforms"][case]["comm_counts"] == [expected] * common.STEPS


def test_lookahead_matches_single_process(results):
    model, opt = tc.reference_lookahead()
    got = results["lookahead"]
    assert_close_dicts(got["weights"], common.weights(model))
    assert_close_dicts(got["slow"], tc.slow_weights(model, opt))
    assert got["slow_types"] == {"DTensor"} and got["slow_is_sharded"]


def test_lookahead_resume_under_fsdp_is_bit_exact(results):
    got = results["lookahead"]
    assert_close_dicts(got["resumed_weights"], got["weights"], exact=True)
    assert_close_dicts(got["resumed_slow"], got["slow"], exact=True)
    assert got["resumed_step"] == [common.STEPS] * 2


def test_lookahead_dcp_resume_under_fsdp_is_bit_exact(results):
    """get_state_dict/dcp.save after 2 steps; a fresh model and Lookahead (state created by
    DCP's zero-gradient step) load it and continue: the same weights, slow weights, count."""
    got = results["lookahead"]
    assert_close_dicts(got["dcp_weights"], got["weights"], exact=True)
    assert_close_dicts(got["dcp_slow"], got["slow"], exact=True)
    assert got["dcp_step"] == [common.STEPS] * 2


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_tensor_parallel_shards_on_any_dim_match_single_process(results, name):
    """Shard(1)/Shard(2) split rows: their partial row sums are all-reduced too, still once."""
    got = results["tensor_parallel"][name]
    for g, want in zip(got["grads"], tc.reference_tp(name)):
        torch.testing.assert_close(g, want, atol=ATOL, rtol=1e-5)
    assert got["comm_counts"] == {"c10d.allreduce_": 1}
