"""FSDP2 (``fully_shard``, DTensor parameters) on 2 processes matches single-process training."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from adamhd.distributed import global_mean_abs
from tests.distributed import common

ATOL = 1e-6


def assert_close_dicts(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=ATOL, rtol=1e-5, msg=name)


@pytest.mark.parametrize("config", list(common.FSDP_CONFIGS))
def test_fsdp_matches_single_process(dist_results, config):
    model, opt = common.reference(**common.FSDP_CONFIGS[config])
    got = dist_results["fsdp"][config]
    assert_close_dicts(got["weights"], common.weights(model))
    for key in ("exp_avg", "exp_avg_sq", "delta_mu", "adanorm_e", "prev_grad"):
        assert_close_dicts(got[key], common.state_by_name(model, opt, key))
    expected_path = "foreach" if common.FSDP_CONFIGS[config]["foreach"] else "single"
    assert set(got["paths"].values()) == {expected_path}


def test_threshold_is_identical_on_every_rank(dist_results):
    for config in ("foreach_explicit", "single_proximal_amsgrad"):
        per_rank = dist_results["fsdp"][config]["delta_mu_all_ranks"]
        assert len(per_rank) == common.WORLD and per_rank[0]
        assert all(r == per_rank[0] for r in per_rank)


def test_local_shard_mean_would_be_wrong(dist_results):
    """The shards are uneven, so a local-shard mean|p| is not the whole tensor's: the
    comparisons above would catch a threshold taken on the local shard."""
    model, _ = common.reference(**common.FSDP_CONFIGS["foreach_explicit"])
    whole = {n: p.detach().abs().mean().item() for n, p in model.named_parameters()}
    local = dist_results["fsdp"]["foreach_explicit"]["local_shard_mean"]
    assert max(abs(local[n] - whole[n]) for n in whole) > 1e-3


def test_one_small_all_reduce_per_step(dist_results):
    for config, cfg in common.FSDP_CONFIGS.items():
        counts = dist_results["fsdp"][config]["comm_counts"]
        for step, count in enumerate(counts):
            assert not any("gather" in op for op in count), (config, step, count)
        if cfg.get("delta", "adaptive") != "adaptive":
            assert all(c == {} for c in counts), counts
            continue
        if config in common.RULE_CONFIGS:
            # one all-reduce per statistic kind per group (mean|p|, ||g||, kept fraction,
            # ||p|| with ||u||), the same every step after the first: no gathers
            assert all(c == counts[1] for c in counts[2:]), (config, counts)
            assert set(counts[1]) == {"c10d.allreduce_"}, (config, counts)
            continue
        # After the first step (which also initialises delta_mu of both groups): exactly one
        # all-reduce for all tensors of the decayed group, none for the exempt group.
        assert all(c == {"c10d.allreduce_": 1} for c in counts[1:]), (config, counts)
        assert counts[0] == {"c10d.allreduce_": 3}, (config, counts)


def test_fused_with_dtensor_params_raises_clearly(dist_results):
    assert "DTensor" in dist_results["fused_error"]
    assert "foreach=True" in dist_results["fused_error"]


def test_partial_dtensor_param_is_rejected(monkeypatch):
    import adamhd.distributed as d

    placement = SimpleNamespace(is_shard=lambda: False, is_partial=lambda: True)
    fake = SimpleNamespace(placements=(placement,))
    monkeypatch.setattr(d, "is_dtensor", lambda t: t is fake)
    with pytest.raises(RuntimeError, match="Partial DTensor"):
        global_mean_abs([fake])


def test_global_mean_abs_of_plain_tensors_is_the_mean():
    a, b = torch.randn(5, 3), torch.zeros(0)
    got = global_mean_abs([a, b])
    torch.testing.assert_close(got[0], a.abs().mean())
    assert got[1].item() == 0.0
