"""``with_decoupled_decay`` on the survey's optimizers: Huber decay on top equals the undecayed
step plus the rule (float64 references), L2 equals the class's own ``weight_decay``."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from adamhd import AdaLo, with_decoupled_decay
from tests.optim import common, reference
from tests.optim.test_reference import _ref

STEPS = 5
WD = 0.4


def _train(name, shape, decay_kw, dtype=torch.float64):
    cls, kwargs = common.CASES[name]
    kwargs = {k: v for k, v in kwargs.items() if k != "weight_decay"}
    grads = common.grads_for(shape, STEPS)
    p0 = torch.randn(shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    p = p0.to(dtype).clone().requires_grad_()
    opt = with_decoupled_decay(cls)([p], **kwargs, weight_decay=WD, **decay_kw)
    common.run(opt, [p], [grads], common.losses(STEPS))
    return p0, grads, p, opt, {**kwargs, "weight_decay": 0.0}


@pytest.mark.parametrize("delta", [0.3, "adaptive"])
@pytest.mark.parametrize("name", list(common.CASES))
def test_huber_on_top_is_the_undecayed_step_plus_the_rule(name, delta):
    shape = (3, 4)
    p0, grads, p, opt, kw = _train(name, shape, dict(decay="huber", delta=delta))
    tau = common.CASES[name][1]["lr"] * WD
    hook = reference.huber_explicit(tau, None if delta == "adaptive" else delta)
    want, _ = _ref(name, p0, grads, {**kw, "decay": hook})
    torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-13)
    undecayed, _ = _ref(name, p0, grads, kw)
    assert (p.detach() - undecayed).abs().max() > 1e-3  # the decay did something
    if delta == "adaptive":
        assert opt.state[p]["delta_mu"].dtype == torch.float64


@pytest.mark.parametrize("name", ["nsgda", "smmf", "sm3"])
def test_l2_decay_equals_the_class_own_weight_decay(name):
    cls, kwargs = common.CASES[name]
    _, grads, wrapped, _, _ = _train(name, (4, 3), dict(decay="l2"), torch.float32)
    p = torch.randn(4, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    p = p.float().requires_grad_()
    common.run(cls([p], **{**kwargs, "weight_decay": WD}), [p], [grads], common.losses(STEPS))
    torch.testing.assert_close(wrapped.detach(), p.detach(), rtol=1e-6, atol=1e-7)


def test_wrapped_nsgda_state_dict_resumes_bit_exactly():
    cls = with_decoupled_decay(common.CASES["nsgda"][0])
    params = [torch.randn(4, 5).requires_grad_()]
    gs = [common.grads_for((4, 5), 4, 0, torch.float32)]
    straight = copy.deepcopy(params)
    common.run(cls(straight, lr=0.05, weight_decay=WD), straight, gs)
    opt = cls(params, lr=0.05, weight_decay=WD)
    common.run(opt, params, [gs[0][:2]])
    resumed = [p.detach().clone().requires_grad_() for p in params]
    opt2 = cls(resumed, lr=0.05, weight_decay=WD)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    common.run(opt2, resumed, [gs[0][2:]])
    assert torch.equal(resumed[0], straight[0])


def test_wrapped_adalo_takes_the_loss_and_refuses_none_before_decaying():
    cls = with_decoupled_decay(AdaLo)
    p = torch.ones(3, 2, requires_grad=True)
    p.grad = torch.ones(3, 2)
    opt = cls([p], weight_decay=WD)
    with pytest.raises(ValueError, match="needs the loss"):
        opt.step()
    with pytest.raises(TypeError, match="scaler"):
        opt.step(lambda: torch.tensor(1.0), scaler=object())
    assert torch.equal(p, torch.ones(3, 2)) and not opt.state
    assert opt.step(lambda: torch.tensor(1.0)).item() == 1.0  # a closure's loss reaches AdaLo
    assert "exp_avg" in opt.state[p] and "delta_mu" in opt.state[p]


def test_wrapped_adalo_under_gradscaler_skips_everything_on_inf():
    cls = with_decoupled_decay(AdaLo)
    p = torch.full((4,), 0.5, requires_grad=True)
    opt = cls([p], lr=2.0, weight_decay=WD)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    scaler.scale((p * p).sum()).backward()
    scaler.step(opt, loss=1.0)
    scaler.update()
    before = copy.deepcopy((p.detach().clone(), opt.state_dict()["state"]))
    opt.zero_grad()
    scaler.scale((p * p).sum()).backward()
    p.grad[0] = math.inf
    scaler.step(opt, loss=1.0)
    scaler.update()
    assert scaler.get_scale() == 2.0
    assert torch.equal(p.detach(), before[0])
    common.assert_state_equal(opt.state_dict()["state"], before[1])
