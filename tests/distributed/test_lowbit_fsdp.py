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


def assert_same_snapshot(got: dict, want: dict) -> None:
    """Weights and every state byte equal, bit for bit (dtypes too)."""
    for part in ("weights", "step", "delta_mu", "exp_avg", "exp_avg_sq"):
        assert got[part].keys() == want[part].keys(), part
        for name, value in want[part].items():
            assert got[part][name].dtype == value.dtype, (part, name)
            assert torch.equal(got[part][name], value), (part, name)
    assert len(got["scales"]) == common.WORLD
    for ours, theirs in zip(got["scales"], want["scales"]):
        assert ours.keys() == theirs.keys()
        for name in theirs:
            assert ours[name].keys() == theirs[name].keys() == {"exp_avg_scale",
                                                                "exp_avg_sq_scale"}
            for key, value in theirs[name].items():
                assert torch.equal(ours[name][key], value), (name, key)


def test_int8_dcp_resume_on_two_ranks_is_bit_exact(dist_results):
    r = dist_results["lowbit_dcp"]
    saved = r["saved"]
    # every tensor is coded, and the two ranks' scales differ (each shard has its own)
    assert all(m.dtype == torch.uint8 for m in saved["exp_avg"].values())
    rank0, rank1 = saved["scales"]
    assert not torch.equal(rank0["0.weight"]["exp_avg_scale"], rank1["0.weight"]["exp_avg_scale"])
    assert rank0["2.bias"]["exp_avg_scale"].shape == rank1["2.bias"]["exp_avg_scale"].shape == (1,)
    assert set(saved["step"]["0.weight"].reshape(-1).tolist()) == {2.0}
    assert_same_snapshot(r["loaded"], saved)
    assert_same_snapshot(r["resumed"], r["continued"])


def test_int8_dcp_other_layout_is_refused_before_anything_changes(dist_results, tmp_path):
    """2 ranks -> 1 process with DCP: the scales' shape names the layout, DCP refuses before
    reading; a 1-process state_dict given to the 2-rank optimizer: StateError, nothing changed."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict

    r = dist_results["lowbit_dcp"]
    assert "int8 blocks lie within a shard" in r["plain_error"]
    assert "state_dtype='float32'" in r["plain_error"]
    assert_same_snapshot(r["after_refusal"], r["before_refusal"])

    model = common.lowbit_model()
    opt = common.make_optimizer(model, **common.LOWBIT_DCP)
    common.train(model, opt, common.lowbit_batches()[:1])
    before = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in
              model.named_parameters()}
    weights = common.weights(model)
    msd, osd = get_state_dict(model, opt)
    with pytest.raises(CheckpointException) as err:  # a BaseException around DCP's ValueError
        dcp.load({"model": msd, "optim": osd},
                 checkpoint_id=str(dist_results["out"] / "ckpt_lowbit"))
    assert "Size mismatch between saved torch.Size([2, 1])" in str(err.value)
    assert "exp_avg_scale" in str(err.value)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), weights[name])
        for key, value in before[name].items():
            assert torch.equal(opt.state[p][key], value), (name, key)


def test_int8_other_layout_through_float32_moments(dist_results):
    """The route the refusal names: decoded to float32 on the 2 ranks (exactly the codes'
    values), saved, loaded in 1 process as float32, then converted to int8 (re-encoded in the
    1-process blocks: within half a code step)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from adamhd import AdamHD
    from tests.core.test_lowbit import decode64

    r = dist_results["lowbit_dcp"]
    saved, decoded = r["saved"], r["decoded"]
    for key, signed in (("exp_avg", True), ("exp_avg_sq", False)):
        for name, codes in saved[key].items():
            rows = codes.shape[0] - codes.shape[0] // 2  # torch.chunk's split of dim 0
            parts = [codes[:rows], codes[rows:]]
            want = torch.cat([decode64(part, rank[name][f"{key}_scale"], signed)
                              for part, rank in zip(parts, saved["scales"])])
            assert decoded[key][name].dtype == torch.float32
            # the float32 products of the codes' values and the scales (rounded once or twice)
            torch.testing.assert_close(decoded[key][name].double(), want, rtol=2.0**-22, atol=0,
                                       msg=f"{key} {name}")

    model = common.lowbit_model()
    opt32 = common.make_optimizer(model, **{**common.LOWBIT_DCP, "state_dtype": "float32"})
    msd, osd = get_state_dict(model, opt32)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(dist_results["out"] / "ckpt_lowbit_fp32"))
    set_state_dict(model, opt32, model_state_dict=state["model"], optim_state_dict=state["optim"])
    opt8 = common.make_optimizer(model, **common.LOWBIT_DCP)
    opt8.load_state_dict(opt32.state_dict())
    assert isinstance(opt8, AdamHD)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), saved["weights"][name], atol=0, rtol=0)
        s = opt8.state[p]
        assert s["exp_avg"].dtype == torch.uint8 and s["step"].item() == 2.0
        m = decoded["exp_avg"][name].double()
        got = decode64(s["exp_avg"], s["exp_avg_scale"], True)
        big = m.abs() > m.abs().max() * 2.0**-12
        assert ((got - m).abs() / m.abs())[big].max() <= 2.0**-4 * 1.0001, name
