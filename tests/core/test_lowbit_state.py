"""Low-bit AdamHD states: checkpoints (round trip, conversion), GradScaler skips, bad input."""

import copy
import math

import pytest
import torch
from torch import nn

from adamhd import AdamHD
from adamhd.optim.adamhd import lowbit
from adamhd.state import StateError


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(40, 64), nn.Tanh(), nn.Linear(64, 3))


def train(model, opt, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 40, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def states(opt):
    return [{k: v.clone() for k, v in s.items()} for s in opt.state.values()]


def assert_same_states(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k


KW = dict(lr=1e-2, min_8bit_size=512)


@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8"])
@pytest.mark.parametrize("foreach", [False, True])
def test_resume_from_state_dict_is_bit_exact(state_dtype, foreach):
    model = make_model()
    opt = AdamHD(model.parameters(), state_dtype=state_dtype, foreach=foreach, **KW)
    train(model, opt, 3)
    saved_model = copy.deepcopy(model.state_dict())
    saved = copy.deepcopy(opt.state_dict())
    if state_dtype == "int8":  # the large weight is coded, the small ones stay float32
        first = opt.state[model[0].weight]
        assert first["exp_avg"].dtype == torch.uint8 and first["exp_avg_scale"].shape == (10,)
        assert opt.state[model[0].bias]["exp_avg"].dtype == torch.float32
    train(model, opt, 3, seed=2)

    other = make_model(seed=9)
    other.load_state_dict(saved_model)
    opt2 = AdamHD(other.parameters(), state_dtype=state_dtype, foreach=foreach, **KW)
    opt2.load_state_dict(saved)
    assert_same_states(states(opt2), [{k: v for k, v in s.items()} for s in
                                      saved["state"].values()])
    train(other, opt2, 3, seed=2)
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.equal(p, q)
    assert_same_states(states(opt), states(opt2))


def test_float32_checkpoint_into_int8_and_back():
    model = make_model()
    opt = AdamHD(model.parameters(), **KW)
    train(model, opt, 4)
    full = copy.deepcopy(opt.state_dict())
    weight = model[0].weight

    small = AdamHD(model.parameters(), state_dtype="int8", **KW)
    small.load_state_dict(copy.deepcopy(full))
    assert small.param_groups[0]["state_dtype"] == "int8"  # this optimizer's choice stays
    s = small.state[weight]
    assert s["exp_avg"].dtype == torch.uint8
    m32, v32 = full["state"][0]["exp_avg"], full["state"][0]["exp_avg_sq"]
    code_m, scale_m = lowbit.encode_int8(m32, True)
    assert torch.equal(s["exp_avg"], code_m) and torch.equal(s["exp_avg_scale"], scale_m)
    # back to float32: the decoded values, within the code's precision of the originals
    back = AdamHD(model.parameters(), **KW)
    back.load_state_dict(copy.deepcopy(small.state_dict()))
    b = back.state[weight]
    assert b["exp_avg"].dtype == torch.float32 and "exp_avg_scale" not in b
    assert torch.equal(b["exp_avg"], lowbit.decode_int8(code_m, scale_m, True))
    big = m32.abs() > m32.abs().max() * 2.0**-12
    rel = ((b["exp_avg"] - m32).abs() / m32.abs())[big]
    assert rel.max() <= 2.0**-4 * 1.0001  # half a step of 3 mantissa bits
    rel_v = ((b["exp_avg_sq"] - v32).abs() / v32.clamp_min(1e-30))[v32 > v32.max() * 2.0**-24]
    assert rel_v.max() <= 2 * 2.0**-5 + 2.0**-10  # the root's half step, squared
    # bf16: loads the same way (round to nearest)
    half = AdamHD(model.parameters(), state_dtype="bfloat16", **KW)
    half.load_state_dict(copy.deepcopy(full))
    assert torch.equal(half.state[weight]["exp_avg"], m32.to(torch.bfloat16))


@pytest.mark.parametrize("state_dtype,foreach", [("int8", None), ("int8", True),
                                                 ("bfloat16", False)])
def test_grad_scaler_skip_changes_nothing(state_dtype, foreach):
    """Weights, codes, scales and the step (the rounding noise's counter) unchanged."""
    model = make_model()
    opt = AdamHD(model.parameters(), state_dtype=state_dtype, foreach=foreach, **KW)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    train(model, opt, 2)
    before_p = [p.detach().clone() for p in model.parameters()]
    before = states(opt)
    loss = model(torch.randn(4, 40)).sum() * math.inf
    opt.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before_p))
    assert_same_states(states(opt), before)


def test_bad_inputs_raise_before_anything_changes():
    p = nn.Parameter(torch.randn(600))
    with pytest.raises(ValueError, match="state_dtype must be one of"):
        AdamHD([p], state_dtype="int4")
    with pytest.raises(ValueError, match="min_8bit_size"):
        AdamHD([p], state_dtype="int8", min_8bit_size=-1)
    with pytest.raises(ValueError, match="amsgrad"):
        AdamHD([p], state_dtype="int8", amsgrad=True)
    with pytest.raises(ValueError, match="update"):
        AdamHD([p], state_dtype="bfloat16", update="atan2")
    with pytest.raises(ValueError, match="rounding_seed"):
        AdamHD([p], bf16_stochastic_round=True, rounding_seed=-1)
    with pytest.raises(ValueError, match="differentiable=True"):
        AdamHD([p], state_dtype="int8", differentiable=True)
    with pytest.raises(RuntimeError, match="fused=True cannot be honoured: .*torch.float64"):
        AdamHD([nn.Parameter(torch.randn(600, dtype=torch.float64))], state_dtype="int8",
               fused=True)
    with pytest.raises(ValueError, match="state_dtype"):
        AdamHD([p]).add_param_group({"params": [nn.Parameter(torch.ones(2))],
                                     "state_dtype": "fp8"})


def _stepped_int8(seed: int) -> tuple[nn.Parameter, AdamHD]:
    torch.manual_seed(seed)
    p = nn.Parameter(torch.randn(600))
    opt = AdamHD([p], lr=0.01, state_dtype="int8", min_8bit_size=0)
    p.grad = torch.randn(600)
    opt.step()
    return p, opt


def _spoil_missing_scale(state):
    del state["exp_avg_scale"]


def _spoil_m_byte(state):
    state["exp_avg"][5] = 121  # the magnitude bits of exp_avg's code stop at 15 << 3 = 120


def _spoil_negative_m_byte(state):
    state["exp_avg"][5] = 128 + 121


def _spoil_v_byte(state):
    state["exp_avg_sq"][7] = 241  # exp_avg_sq's code stops at 15 << 4 = 240


def _spoil_scale(state):
    state["exp_avg_sq_scale"][1] = -0.5


@pytest.mark.parametrize("spoil, match", [
    (_spoil_missing_scale, "'exp_avg' is an 8-bit code without its exp_avg_scale"),
    (_spoil_m_byte, "'exp_avg' holds bytes above 120"),
    (_spoil_negative_m_byte, "'exp_avg' holds bytes above 120"),
    (_spoil_v_byte, "'exp_avg_sq' holds bytes above 240"),
    (_spoil_scale, "exp_avg_sq_scale holds negative scales"),
])
def test_an_unreadable_code_is_refused_before_anything_changes(spoil, match):
    _, source = _stepped_int8(0)
    saved = copy.deepcopy(source.state_dict())
    saved["param_groups"][0]["lr"] = 0.5
    spoil(saved["state"][0])
    p, target = _stepped_int8(1)
    before = {k: v.clone() for k, v in target.state[p].items()}
    with pytest.raises(StateError, match=r"param_groups\[0\]\['params'\]\[0\]: " + match):
        target.load_state_dict(saved)
    assert target.param_groups[0]["lr"] == 0.01
    assert target.state[p].keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(target.state[p][key], value), key


def test_the_largest_bytes_of_each_code_are_loaded():
    _, source = _stepped_int8(0)
    saved = copy.deepcopy(source.state_dict())
    state = saved["state"][0]
    state["exp_avg"][:4] = torch.tensor([120, 128 + 120, 0, 128], dtype=torch.uint8)
    state["exp_avg_sq"][:2] = 240
    p, target = _stepped_int8(1)
    target.load_state_dict(saved)
    for key in ("exp_avg", "exp_avg_sq", "exp_avg_scale", "exp_avg_sq_scale"):
        assert torch.equal(target.state[p][key], state[key]), key
