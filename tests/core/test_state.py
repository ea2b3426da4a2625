"""state_dict round trips, bit-exact resume, and loading older or AdamW checkpoints."""

import copy
import math

import pytest
import torch
from torch import nn

from adamhd import AdamHD
from tests.core.conftest import available_paths, path_kwargs


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))


def train(model, opt, steps, seed=1, sched=None):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()


@pytest.mark.parametrize("path", available_paths())
@pytest.mark.parametrize(
    "hyper",
    [dict(), dict(decay_form="proximal", amsgrad=True), dict(delta=0.05)],
    ids=["adaptive", "proximal-amsgrad", "fixed"],
)
def test_resume_is_bit_exact(tmp_path, path, hyper):
    kw = dict(lr=1e-2, weight_decay=0.2, **hyper, **path_kwargs(path))
    straight = make_model()
    opt = AdamHD(straight.parameters(), **kw)
    train(straight, opt, 10)
    train(straight, opt, 10, seed=2)

    first = make_model()
    opt1 = AdamHD(first.parameters(), **kw)
    train(first, opt1, 10)
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, tmp_path / "ckpt.pt")

    resumed = make_model(seed=123)  # different init: everything must come from the checkpoint
    opt2 = AdamHD(resumed.parameters(), **kw)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    train(resumed, opt2, 10, seed=2)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    for p_a, p_b in zip(straight.parameters(), resumed.parameters()):
        for key, value in opt.state[p_a].items():
            assert torch.equal(value, opt2.state[p_b][key]), key


def test_state_dict_holds_the_threshold_state():
    model = make_model()
    opt = AdamHD(model.parameters(), weight_decay=0.1)
    train(model, opt, 3)
    sd = opt.state_dict()
    for p_state in sd["state"].values():
        assert set(p_state) == {"step", "exp_avg", "exp_avg_sq", "delta_mu"}
        assert p_state["delta_mu"].dim() == 0 and p_state["delta_mu"].item() > 0
        assert p_state["step"].item() == 3
    group = sd["param_groups"][0]
    assert group["delta"] == "adaptive" and group["delta_scale"] == 1.5
    assert group["delta_beta"] == 0.99 and group["decay_form"] == "explicit"


def test_loads_an_adamw_checkpoint_and_starts_the_threshold_from_the_weights():
    model = make_model()
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train(model, adamw, 5)
    ours = AdamHD(model.parameters(), lr=1e-2)
    ours.load_state_dict(adamw.state_dict())
    # The loaded groups keep AdamW's values and gain AdamHD's defaults.
    assert ours.param_groups[0]["delta"] == "adaptive"
    before = [p.detach().abs().mean().item() for p in model.parameters()]
    train(model, ours, 1)
    for p, a in zip(model.parameters(), before):
        assert ours.state[p]["step"].item() == 6
        assert ours.state[p]["delta_mu"].item() == pytest.approx(a, rel=1e-6)


def test_setstate_fills_defaults_for_older_checkpoints():
    model = make_model()
    opt = AdamHD(model.parameters())
    train(model, opt, 2)
    state = opt.__getstate__()
    old = copy.deepcopy(state)
    for group in old["param_groups"]:
        for key in ("delta", "delta_scale", "delta_beta", "decay_form", "maximize", "foreach",
                    "capturable", "differentiable", "fused", "amsgrad"):
            group.pop(key)
    for p_state in old["state"].values():
        p_state["step"] = float(p_state["step"])  # very old checkpoints kept a Python number
    fresh = AdamHD.__new__(AdamHD)
    fresh.__setstate__(old)
    group = fresh.param_groups[0]
    assert group["delta"] == "adaptive" and group["decay_form"] == "explicit"
    assert group["delta_scale"] == 1.5 and group["delta_beta"] == 0.99
    for p_state in fresh.state.values():
        assert torch.is_tensor(p_state["step"]) and p_state["step"].item() == 2


def test_new_adaptive_group_after_fixed_creates_threshold_state():
    model = make_model()
    opt = AdamHD(model.parameters(), delta=0.1)
    train(model, opt, 2)
    assert all("delta_mu" not in s for s in opt.state.values())
    opt.param_groups[0]["delta"] = "adaptive"
    train(model, opt, 1)
    assert all("delta_mu" in s for s in opt.state.values())


def test_inf_delta_state_dict_loads_into_adamw():
    """A checkpoint of AdamHD(delta=inf) continues in torch AdamW identically."""
    a, b = make_model(), make_model()
    opt_a = AdamHD(a.parameters(), lr=1e-2, delta=math.inf, fused=False)
    opt_b = AdamHD(b.parameters(), lr=1e-2, delta=math.inf, fused=False)
    train(a, opt_a, 4)
    train(b, opt_b, 4)
    adamw = torch.optim.AdamW(b.parameters(), lr=1e-2)
    adamw.load_state_dict(opt_b.state_dict())
    train(a, opt_a, 4, seed=3)
    train(b, adamw, 4, seed=3)
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)
