"""int8 moments saved in another layout (scales of S dim-0 shards) loaded into one process:
each element decoded with the scale of the block it was in when saved, encoded again in this
process's blocks (``adamhd.optim.adamhd.scales``). The 2-rank FSDP2 and DCP cases are in
``tests/distributed/test_lowbit_fsdp.py``; these build the saved layout by hand."""

import copy

import pytest
import torch
from torch import nn

from adamhd import AdamHD
from adamhd.optim.adamhd import lowbit
from adamhd.state import StateError
from tests.core.test_lowbit import decode64

BLOCK = 256
SIGNED = {"exp_avg": True, "exp_avg_sq": False}
MANTISSA = {"exp_avg": 3, "exp_avg_sq": 4}


def dim0_parts(t: torch.Tensor, shards: int) -> list[torch.Tensor]:
    """FSDP2's split of dim 0 over ``shards`` ranks (as torch.chunk, trailing shards empty)."""
    rows = t.shape[0] if t.dim() else 1
    step = -(-rows // shards)
    flat = t.reshape(rows, -1)
    return [flat[s * step:(s + 1) * step] for s in range(shards)]


def saved_values64(codes: torch.Tensor, scales: torch.Tensor, signed: bool) -> torch.Tensor:
    """float64 values of codes saved with scales ``(shards, width)`` (or 1-D: one process),
    each shard decoded with its own row (blocks of the shard's flattened elements)."""
    rows = scales[None] if scales.dim() == 1 else scales
    parts = dim0_parts(codes, rows.shape[0])
    out = [decode64(part, row[: -(-part.numel() // BLOCK)], signed).reshape(-1)
           for part, row in zip(parts, rows)]
    return torch.cat(out).view(codes.shape)


def half_step64(value: torch.Tensor, scale: torch.Tensor, mantissa: int) -> torch.Tensor:
    """Half the code step at ``|value|`` in a block of this scale (float64, elementwise): the
    binade's step ``2**(e - mantissa)`` of ``y = |value| / scale``, linear under ``2**-14``."""
    y = value.abs() / scale
    e = torch.floor(torch.log2(y)).clamp(min=-14)
    return 2.0 ** (e - mantissa - 1) * scale


def assert_within_half_step(codes, scales, want64: torch.Tensor, key: str) -> None:
    """The moment of ``codes`` (this layout's 1-D ``scales``, or rows of shards) is within half
    a code step of ``want64`` (float64): for ``exp_avg_sq`` the code is of its square root.
    Slack: 2**-20 relative for the float32 products before the rounding."""
    got = saved_values64(codes, scales, SIGNED[key])
    rows = scales[None] if scales.dim() == 1 else scales
    per_element = torch.cat([row[: -(-part.numel() // BLOCK)].double().repeat_interleave(BLOCK)
                             [: part.numel()] for part, row in
                             zip(dim0_parts(codes, rows.shape[0]), rows)]).view(codes.shape)
    if key == "exp_avg_sq":
        got, want64 = got.sqrt(), want64.sqrt()
    bound = half_step64(want64, per_element, MANTISSA[key]) + want64.abs() * 2.0**-20
    excess = ((got - want64).abs() - bound).max().item()
    assert excess <= 0.0, (key, excess)


def saved_in_shards(values: dict, shards: int) -> dict:
    """{key: (uint8 codes, scales (shards, width))}: the float32 moments coded per shard."""
    out = {}
    for key, value in values.items():
        parts = [lowbit.encode_int8(part, SIGNED[key]) for part in dim0_parts(value, shards)]
        width = max(scale.numel() for _, scale in parts)
        rows = torch.zeros(shards, width)
        for s, (_, scale) in enumerate(parts):
            rows[s, : scale.numel()] = scale
        out[key] = (torch.cat([c.reshape(-1) for c, _ in parts]).view(value.shape), rows)
    return out


def moments(shape, seed: int) -> dict:
    """m over 6 decades with both signs, v > 0 with a few large outliers (block maxima that
    differ from block to block, so a wrong block's scale shows)."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(shape, generator=g) * torch.exp(torch.empty(shape).uniform_(-7, 0,
                                                                                generator=g))
    v = torch.exp(torch.empty(shape).uniform_(-16, -4, generator=g))
    v.view(-1)[torch.randint(0, v.numel(), (7,), generator=g)] = 1.0
    return {"exp_avg": m, "exp_avg_sq": v}


def target(shape):
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(shape))
    opt = AdamHD([p], lr=1e-2, state_dtype="int8", min_8bit_size=0)
    return p, opt


def state_dict_of(opt: AdamHD, saved: dict, step: float = 3.0) -> dict:
    entry = {"step": torch.tensor(step)}
    for key, (codes, rows) in saved.items():
        entry[key], entry[f"{key}_scale"] = codes, rows
    return {"state": {0: entry}, "param_groups": copy.deepcopy(opt.state_dict()["param_groups"])}


@pytest.mark.parametrize("shards", [2, 3, 4])
def test_scales_of_shards_load_into_one_process(shards):
    """(9, 100): shard boundaries at 300/500/600... elements, inside this process's blocks;
    4 shards of 3 rows: the last one empty (a zero row of scales)."""
    p, opt = target((9, 100))
    saved = saved_in_shards(moments(p.shape, shards), shards)
    opt.load_state_dict(state_dict_of(opt, saved))
    state = opt.state[p]
    for key, (codes, rows) in saved.items():
        assert state[key].dtype == torch.uint8 and state[key].shape == p.shape
        assert state[f"{key}_scale"].shape == (4,)  # 900 elements: 4 blocks of this process
        want = saved_values64(codes, rows, SIGNED[key])
        assert_within_half_step(state[key], state[f"{key}_scale"], want, key)
    assert state["step"].item() == 3.0
    before = p.detach().clone()
    p.grad = torch.ones_like(p)
    opt.step()
    assert torch.isfinite(p).all() and not torch.equal(p.detach(), before)


def test_the_bound_fails_on_a_wrong_scale():
    """The check above can fail: the saved moments decoded with this process's blocks of the
    saved scales (the mistake the re-encode avoids) are far outside half a code step."""
    p, _ = target((9, 100))
    saved = saved_in_shards(moments(p.shape, 2), 2)
    codes, rows = saved["exp_avg"]
    want = saved_values64(codes, rows, True)
    wrong = rows.reshape(-1)[:4].clone()  # shard 0's two blocks, then shard 1's first two
    with pytest.raises(AssertionError):
        assert_within_half_step(codes, wrong, want, "exp_avg")


def test_one_row_of_scales_is_taken_as_is():
    """Scales of one dim-0 shard (a 1-rank FSDP2 mesh) are this process's blocks: no re-encode,
    the codes and scales bit for bit."""
    p, opt = target((9, 100))
    saved = saved_in_shards(moments(p.shape, 5), 1)
    opt.load_state_dict(state_dict_of(opt, saved))
    for key, (codes, rows) in saved.items():
        assert torch.equal(opt.state[p][key], codes)
        assert torch.equal(opt.state[p][f"{key}_scale"], rows[0])


@pytest.mark.parametrize("shape", [(2, 5), (2, 5, 4), (3,)])
def test_scales_of_no_layout_of_this_parameter_are_refused(shape):
    """A shape no dim-0 layout of the parameter gives: StateError, nothing changed."""
    p, opt = target((9, 100))
    p.grad = torch.ones_like(p)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[p].items()}
    saved = saved_in_shards(moments(p.shape, 2), 2)
    saved["exp_avg"] = (saved["exp_avg"][0], torch.ones(shape))
    with pytest.raises(StateError, match=r"'exp_avg_scale' has shape"):
        opt.load_state_dict(state_dict_of(opt, saved))
    for key, value in before.items():
        assert torch.equal(opt.state[p][key], value), key


def test_a_scalar_and_a_single_row_reshard():
    """Edge shapes: a 0-dim parameter (one element, one block) and a (1, 700) one (one row:
    every saved shard after the first is empty) from 2 saved shards."""
    for shape in [(), (1, 700)]:
        p, opt = target(shape)
        saved = saved_in_shards(moments(shape or (1,), 7), 2)
        saved = {k: (codes.view(shape), rows) for k, (codes, rows) in saved.items()}
        opt.load_state_dict(state_dict_of(opt, saved))
        for key, (codes, rows) in saved.items():
            want = saved_values64(codes, rows, SIGNED[key])
            assert_within_half_step(opt.state[p][key], opt.state[p][f"{key}_scale"], want, key)
