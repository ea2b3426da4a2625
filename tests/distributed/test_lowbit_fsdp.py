"""Low-bit AdamHD moments under FSDP2 (2 processes) equal one process: int8 blocks lie within a
shard (each rank's shard of the (8, 64) weight is one 256-element block) and the bf16 rounding
noise is drawn by the element's index in the whole tensor."""

from __future__ import annotations

import pytest
import torch

from tests.distributed import common


def reference(config: dict):
    model = common.lowbit_model()
    opt = common.make_optimizer(model, **config)
    common.train(model, opt, common.lowbit_batches())
    return model, opt


@pytest.mark.parametrize("config", list(common.LOWBIT))
def test_lowbit_fsdp_matches_single_process(dist_results, config):
    model, opt = reference(common.LOWBIT[config])
    got = dist_results["lowbit"][config]
    for name, want in common.weights(model).items():
        torch.testing.assert_close(got["weights"][name], want, atol=1e-6, rtol=1e-5, msg=name)
    weight = model[0].weight
    state = opt.state[weight]
    codes = torch.uint8 if config.startswith("int8") else torch.bfloat16
    assert state["exp_avg"].dtype == codes
    for key in ("exp_avg", "exp_avg_sq"):
        ours = got[key]["0.weight"]
        assert ours.dtype == codes
        # the codes (or bf16 values) themselves, bit for bit but for float rounding of a
        # near-tie (the sums of the gradients over 2 ranks are rounded differently)
        same = (ours == state[key]).float().mean().item()
        assert same > 0.99, (key, same)
    if config.startswith("int8"):
        shards = torch.cat([rank["0.weight"] for rank in got["scales"]])
        torch.testing.assert_close(shards, state["exp_avg_scale"], atol=0, rtol=1e-5)
