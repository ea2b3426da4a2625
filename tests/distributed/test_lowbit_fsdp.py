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
            assert ours[name].keys() == theirs[name].keys()
            for key, value in theirs[name].items():
                assert torch.equal(ours[name][key], value), (name, key)


def test_int8_dcp_resume_on_two_ranks_is_bit_exact(dist_results):
    r = dist_results["lowbit_dcp"]
    saved = r["saved"]
    # every tensor is coded, and the two ranks' scales differ (each shard has its own)
    assert all(m.dtype == torch.uint8 for m in saved["exp_avg"].values())
    assert all(rank[name].keys() == {"exp_avg_scale", "exp_avg_sq_scale"}
               for rank in saved["scales"] for name in rank)
    rank0, rank1 = saved["scales"]
    assert not torch.equal(rank0["0.weight"]["exp_avg_scale"], rank1["0.weight"]["exp_avg_scale"])
    assert rank0["2.bias"]["exp_avg_scale"].shape == rank1["2.bias"]["exp_avg_scale"].shape == (1,)
    assert set(saved["step"]["0.weight"].reshape(-1).tolist()) == {2.0}
    assert_same_snapshot(r["loaded"], saved)
    assert_same_snapshot(r["resumed"], r["continued"])


def test_int8_dcp_other_layout_is_refused_before_anything_changes(dist_results, tmp_path):
    """2 ranks -> 1 process with DCP's default planner: the scales' shape names the layout, DCP
    refuses before reading (``ScalesAsSavedPlanner`` loads it, below); a 1-process state_dict
    (plain codes) given to the 2-rank optimizer in memory: StateError naming the DCP route,
    nothing changed."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict

    r = dist_results["lowbit_dcp"]
    assert "'exp_avg' must be uint8 codes laid out like the parameter" in r["plain_error"]
    assert "ScalesAsSavedPlanner" in r["plain_error"]
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


# ---- another layout through adamhd.checkpoint.ScalesAsSavedPlanner (common.RESHARD) ----------


def rows_of(scales_by_rank: list, name: str, key: str) -> torch.Tensor:
    """The ranks' scales of one moment as rows (zero padded), one per dim-0 shard."""
    parts = [rank[name][key] for rank in scales_by_rank]
    rows = torch.zeros(len(parts), max(part.numel() for part in parts))
    for s, part in enumerate(parts):
        rows[s, : part.numel()] = part
    return rows


def load_in_one_process(name: str, path, flatten: bool = False) -> tuple:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_state_dict,
    )

    from adamhd.checkpoint import ScalesAsSavedPlanner

    model = common.reshard_model()
    opt = common.make_optimizer(model, **common.RESHARD[name])
    options = StateDictOptions(flatten_optimizer_state_dict=flatten)
    msd, osd = get_state_dict(model, opt, options=options)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(path), planner=ScalesAsSavedPlanner())
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=options)
    return model, opt


def one_process_saved(dist_results, name: str) -> dict:
    return torch.load(dist_results["out"] / f"{name}_1proc.pt", weights_only=False)


def assert_close_after_a_step(got: dict, want: dict, atol: float, moved_from: dict) -> None:
    """Weights one step after a resharded load: within ``atol`` of the uninterrupted run's and
    moved from the loaded ones (by more than ``atol``: the step did something)."""
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, atol=atol, rtol=0, msg=name)
    moved = max((got[n] - moved_from[n]).abs().max().item() for n in want)
    assert moved > 4 * atol, moved


#: the lr of common.BASE: an int8 re-encode (half a code step of m and v) moves an Adam step by
#: a few percent of lr, measured below 0.1 lr
INT8_STEP_ATOL = 0.1 * common.BASE["lr"]


@pytest.mark.parametrize("name", list(common.RESHARD))
def test_same_layout_through_the_planner_is_bit_exact(dist_results, name):
    """The planner changes nothing on the layout that saved: int8 and bf16 state loaded and
    resumed on the same 2 ranks equal the saved and the uninterrupted run bit for bit."""
    r = dist_results["reshard"][name]
    assert_same_snapshot(r["loaded"], r["saved"])
    assert_same_snapshot(r["resumed"], r["continued"])


def test_int8_two_ranks_to_one_process(dist_results):
    """Saved on 2 ranks (the (9, 100) weight's shards: 500 + 400 elements), loaded in 1 process
    through the planner: every moment within half a code step of the saved codes' value (float64
    reference of the 2-rank blocks); then a step close to the uninterrupted 2-rank run's."""
    from tests.core.test_lowbit_reshard import SIGNED, assert_within_half_step, saved_values64

    r = dist_results["reshard"]["int8"]
    saved = r["saved"]
    model, opt = load_in_one_process("int8", dist_results["out"] / "ckpt_int8_2proc")
    assert rows_of(saved["scales"], "0.weight", "exp_avg_scale").shape == (2, 2)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), saved["weights"][name])
        state = opt.state[p]
        assert state["step"].item() == 2.0 and torch.equal(state["delta_mu"],
                                                            saved["delta_mu"][name])
        for key, signed in SIGNED.items():
            want = saved_values64(saved[key][name],
                                  rows_of(saved["scales"], name, f"{key}_scale"), signed)
            assert state[key].dtype == torch.uint8
            assert state[f"{key}_scale"].shape == (-(-p.numel() // 256),)
            assert_within_half_step(state[key], state[f"{key}_scale"], want, key)
    common.train(model, opt, common.reshard_batches()[2:3])
    assert_close_after_a_step(common.weights(model), r["continued1"]["weights"],
                              INT8_STEP_ATOL, saved["weights"])


def test_int8_two_ranks_to_one_process_with_flat_optimizer_keys(dist_results):
    """Saved and loaded with ``flatten_optimizer_state_dict=True`` (dotted keys): the planner
    finds the scales there too; the same state as the nested checkpoint gives, bit for bit."""
    out = dist_results["out"]
    model, opt = load_in_one_process("int8", out / "ckpt_int8_2proc")
    flat_model, flat_opt = load_in_one_process("int8", out / "ckpt_int8_2proc_flat", True)
    for p, q in zip(model.parameters(), flat_model.parameters()):
        assert opt.state[p].keys() == flat_opt.state[q].keys()
        for key, value in opt.state[p].items():
            assert torch.equal(flat_opt.state[q][key], value), key


def test_int8_one_process_to_two_ranks(dist_results):
    """Saved by 1 process (blocks of the whole tensor), loaded on 2 ranks through the planner:
    each rank's moments within half a code step of the saved ones, in its own blocks; a step
    then close to the uninterrupted 1-process run's."""
    from tests.core.test_lowbit_reshard import SIGNED, assert_within_half_step, saved_values64

    one = one_process_saved(dist_results, "int8")
    got = dist_results["reshard"]["int8"]["from_one"]
    for name, state in one["state"].items():
        assert torch.equal(got["weights"][name], one["weights"][name])
        assert got["step"][name].item() == 2.0
        for key, signed in SIGNED.items():
            want = saved_values64(state[key], state[f"{key}_scale"], signed)
            rows = rows_of(got["scales"], name, f"{key}_scale")
            assert rows.shape[0] == 2 and got[key][name].dtype == torch.uint8
            assert_within_half_step(got[key][name], rows, want, key)
    model, _ = common.reshard_reference("int8", 3)
    stepped = dist_results["reshard"]["int8"]["from_one_stepped"]["weights"]
    assert_close_after_a_step(stepped, common.weights(model), INT8_STEP_ATOL, one["weights"])


def test_bf16_two_ranks_to_one_process_is_exact(dist_results):
    """bf16 moments are elementwise: resharded by DCP bit for bit; the step after it equals the
    uninterrupted 2-rank run's (the rounding noise is keyed by the element's global index)."""
    r = dist_results["reshard"]["bf16"]
    model, opt = load_in_one_process("bf16", dist_results["out"] / "ckpt_bf16_2proc")
    for name, p in model.named_parameters():
        for key in ("exp_avg", "exp_avg_sq"):
            value = opt.state[p][key]
            assert value.dtype == torch.bfloat16 and torch.equal(value, r["saved"][key][name])
    common.train(model, opt, common.reshard_batches()[2:3])
    assert_close_after_a_step(common.weights(model), r["continued1"]["weights"], 1e-6,
                              r["saved"]["weights"])


def test_bf16_one_process_to_two_ranks_is_exact(dist_results):
    one = one_process_saved(dist_results, "bf16")
    r = dist_results["reshard"]["bf16"]
    for name, state in one["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            value = r["from_one"][key][name]
            assert value.dtype == torch.bfloat16 and torch.equal(value, state[key])
    model, _ = common.reshard_reference("bf16", 3)
    assert_close_after_a_step(r["from_one_stepped"]["weights"], common.weights(model), 1e-6,
                              one["weights"])


def test_int8_state_of_a_dim1_shard_is_refused_before_anything_changes(dist_results):
    """Blocks of a dim-1 shard (tensor parallel) are not described by a state_dict: both ways
    raise NotImplementedError naming the placements; the load changes no state byte."""
    r = dist_results["other_dim"]
    for key in ("save_error", "load_error"):
        assert "sharded on dim 0 over one mesh dimension" in r[key], key
        assert "Shard(dim=1)" in r[key], key
    assert r["unchanged"]
