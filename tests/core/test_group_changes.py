"""A param group changed by hand after construction (as schedulers and users do) is checked again
at the next step, before anything changes; a changed ``state_dtype`` is honoured, converting the
moments exactly as loading a checkpoint would."""

import copy
import math

import pytest
import torch

import adamhd
from adamhd import AdamHD


def _stepped(opt_factory, steps: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(64, 48))
    opt = opt_factory([w])
    for _ in range(steps):
        w.grad = torch.randn_like(w)
        opt.step()
    w.grad = torch.randn_like(w)
    return w, opt


def _snapshot(w, opt):
    state = {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[w].items()}
    return w.detach().clone(), state


def _assert_unchanged(w, opt, before):
    weight, state = before
    assert torch.equal(w.detach(), weight)
    assert state.keys() == opt.state[w].keys()
    for key, value in state.items():
        now = opt.state[w][key]
        assert torch.equal(now, value) if torch.is_tensor(value) else now == value, key


def _assert_refused_unchanged(w, opt, key, value, named):
    """Set ``key`` of group 0 to ``value``: the step raises naming the group and ``named``, and
    leaves weights and state as they were."""
    before = _snapshot(w, opt)
    opt.param_groups[0][key] = value
    with pytest.raises(ValueError, match=rf"param_groups\[0\]: .*{named}"):
        opt.step()
    _assert_unchanged(w, opt, before)


ADAMHD_BAD = [
    ("lr", math.inf, "learning rate"),
    ("lr", math.nan, "learning rate"),
    ("betas", (1.5, 0.9), "beta"),
    ("eps", -1e-8, "epsilon"),
    ("weight_decay", math.nan, "weight_decay"),
    ("delta", -2.0, "delta"),
    ("decay", "l1", "decay"),
    ("decay_form", "implicit", "decay_form"),
    ("state_dtype", "int4", "state_dtype"),
    ("min_8bit_size", -5, "min_8bit_size"),
]


@pytest.mark.parametrize("key,value,named", ADAMHD_BAD)
def test_adamhd_refuses_a_group_changed_to_a_bad_value_before_anything_changes(key, value, named):
    w, opt = _stepped(lambda ps: AdamHD(ps, lr=1e-2, weight_decay=0.1))
    _assert_refused_unchanged(w, opt, key, value, named)


def test_adamhd_refuses_a_tensor_lr_of_two_elements_set_after_construction():
    w, opt = _stepped(lambda ps: AdamHD(ps, lr=1e-2, foreach=False))
    before = _snapshot(w, opt)
    opt.param_groups[0]["lr"] = torch.tensor([1e-2, 1e-2])
    with pytest.raises(ValueError, match=r"param_groups\[0\]: Tensor lr must be 1-element"):
        opt.step()
    _assert_unchanged(w, opt, before)


@pytest.mark.parametrize("lr", [3e-3, -1e-19])
def test_adamhd_accepts_a_scheduler_change_and_uses_it_as_adamw_does(lr):
    """A scheduler's change of lr is used at the next step as AdamW uses it (bit for bit at
    ``delta=inf``), a float drift below 0 included (AdamW does not refuse it at the step)."""
    options = dict(lr=1e-2, weight_decay=0.1, foreach=False)
    w_hd, opt_hd = _stepped(lambda ps: AdamHD(ps, delta=math.inf, fused=False, **options))
    w_aw, opt_aw = _stepped(lambda ps: torch.optim.AdamW(ps, **options))
    for opt in (opt_hd, opt_aw):
        opt.param_groups[0]["lr"] = lr
        opt.step()
    assert torch.equal(w_hd.detach(), w_aw.detach())
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(opt_hd.state[w_hd][key], opt_aw.state[w_aw][key])


@pytest.mark.parametrize("base", [torch.optim.SGD, torch.optim.Adam])
@pytest.mark.parametrize(
    "key,value,named",
    [("weight_decay", -0.1, "weight_decay"), ("delta", 0.0, "delta"),
     ("decay", "bogus", "decay"), ("decay_scaling", "cosine", "decay_scaling"),
     ("lr", math.nan, "learning rate"), ("lr", math.inf, "learning rate")],
)
def test_wrapper_refuses_a_group_changed_to_a_bad_decay_option(base, key, value, named):
    cls = adamhd.with_decoupled_decay(base)
    w, opt = _stepped(lambda ps: cls(ps, lr=1e-2, weight_decay=0.1))
    _assert_refused_unchanged(w, opt, key, value, named)


@pytest.mark.parametrize("make, key, value, named", [
    (lambda ps: adamhd.MomentumSGD(ps, lr=1e-2), "momentum", 1.5, "momentum"),
    (lambda ps: adamhd.MomentumSGD(ps, lr=1e-2), "lr", math.nan, "learning rate"),
    (lambda ps: adamhd.SGDW(ps, lr=1e-2, weight_decay=0.1), "momentum", -0.5, "momentum"),
    (lambda ps: adamhd.NSGDA(ps, lr=1e-2), "eps", -1.0, "eps"),
    (lambda ps: adamhd.SM3(ps, lr=1e-2), "lr", math.inf, "learning rate"),
])
def test_the_family_refuses_a_group_changed_to_a_bad_value(make, key, value, named):
    w, opt = _stepped(make)
    _assert_refused_unchanged(w, opt, key, value, named)


def test_momentum_sgd_checks_an_added_group():
    opt = adamhd.MomentumSGD([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    with pytest.raises(ValueError, match="Invalid momentum: momentum=2.0"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "momentum": 2.0})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("lr", [math.nan, math.inf])
def test_wrapper_refuses_a_non_finite_lr_that_its_base_would_take(lr):
    """torch's SGD checks only lr < 0, so NaN and inf passed and made the decay NaN or inf."""
    cls = adamhd.with_decoupled_decay(torch.optim.SGD)
    with pytest.raises(ValueError, match="Invalid learning rate: lr=(nan|inf)"):
        cls([torch.nn.Parameter(torch.ones(3))], lr=lr, weight_decay=0.1)


@pytest.mark.parametrize(
    "old,new",
    [("float32", "int8"), ("int8", "float32"), ("float32", "bfloat16"), ("bfloat16", "int8")],
)
@pytest.mark.parametrize("foreach", [False, True])
def test_a_changed_state_dtype_converts_as_a_checkpoint_load_does(old, new, foreach):
    """Run A changes ``state_dtype`` in place; run B saves and loads into a new optimizer with
    the new ``state_dtype``: the next two steps agree bit for bit, weights and every state
    tensor, and the moments are stored in the new format."""
    options = dict(lr=1e-2, weight_decay=0.1, min_8bit_size=256, foreach=foreach,
                   fused=False)
    w_a, opt_a = _stepped(lambda ps: AdamHD(ps, state_dtype=old, **options))
    w_b = torch.nn.Parameter(w_a.detach().clone())
    w_b.grad = w_a.grad.clone()
    opt_b = AdamHD([w_b], state_dtype=new, **options)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as from a file: no aliasing
    opt_a.param_groups[0]["state_dtype"] = new
    for step in range(2):
        opt_a.step()
        opt_b.step()
        torch.manual_seed(10 + step)
        w_a.grad = torch.randn_like(w_a)
        w_b.grad = w_a.grad.clone()
    assert torch.equal(w_a.detach(), w_b.detach())
    assert opt_a.state[w_a].keys() == opt_b.state[w_b].keys()
    for key, value in opt_a.state[w_a].items():
        assert torch.equal(value, opt_b.state[w_b][key]), key
    codes = {"float32": torch.float32, "int8": torch.uint8, "bfloat16": torch.bfloat16}[new]
    assert opt_a.state[w_a]["exp_avg"].dtype == codes
    assert ("exp_avg_scale" in opt_a.state[w_a]) == (new == "int8")


def test_raising_min_8bit_size_above_a_tensor_returns_it_to_full_precision():
    w, opt = _stepped(lambda ps: AdamHD(ps, state_dtype="int8", min_8bit_size=256, fused=False))
    assert opt.state[w]["exp_avg"].dtype == torch.uint8
    opt.param_groups[0]["min_8bit_size"] = w.numel() + 1
    opt.step()
    assert opt.state[w]["exp_avg"].dtype == torch.float32
    assert "exp_avg_scale" not in opt.state[w]
