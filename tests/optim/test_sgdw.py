"""``SGDW``: Algorithm 1 of arXiv 1711.05101, checked against a float64 implementation written
here and against ``torch.optim.SGD`` where the two must agree."""

from __future__ import annotations

import io
import math
import pickle

import pytest
import torch

from adamhd import SGDW
from adamhd.optim import MomentumSGD
from tests.decay.reference64 import Threshold64

F64 = torch.float64
LR0 = 0.2


def schedule(t: int) -> float:
    """A changing multiplier eta_t: warm-up, then cosine."""
    return (t + 1) / 3 if t < 2 else 0.5 * (1 + math.cos(math.pi * t / 8))


def params64(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=F64).requires_grad_() for s in [(5, 4), (4,)]]


def grads(step, like):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in like]


def algorithm1(x0, steps, beta1, lam, rule="l2", delta=None):
    """Loshchilov & Hutter, Algorithm 1 (SGDW), float64, with torch's eta_t = lr_t/initial_lr:

        m_t = beta1*m_{t-1} + eta_t*alpha*g_t;   x_t = x_{t-1} - m_t - eta_t*lambda*D(x_{t-1})

    D(x) = x (the paper) or clip(x, -d, d) (Huber decay)."""
    xs = [x.detach().clone() for x in x0]
    ms = [torch.zeros_like(x) for x in xs]
    thresholds = [Threshold64() for _ in xs]
    for t in range(steps):
        eta = schedule(t)
        for i, (x, g) in enumerate(zip(xs, grads(t, xs))):
            if rule == "l2":
                pull = x
            else:
                d = thresholds[i](x) if delta == "adaptive" else delta
                pull = x.clamp(-d, d)
            ms[i] = beta1 * ms[i] + eta * LR0 * g
            xs[i] = x - ms[i] - eta * lam * pull
    return xs, ms


def run_sgdw(params, steps, **kwargs):
    opt = SGDW(params, lr=LR0, **kwargs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    for t in range(steps):
        for p, g in zip(params, grads(t, params)):
            p.grad = g
        opt.step()
        sched.step()
    return opt


@pytest.mark.parametrize(
    "rule, delta", [("l2", None), ("huber", 0.3), ("huber", "adaptive")], ids=["l2", "fixed", "ad"]
)
@pytest.mark.parametrize("foreach", [False, True])
def test_sgdw_is_algorithm_1_under_a_changing_schedule(rule, delta, foreach):
    params = params64()
    x_ref, m_ref = algorithm1(params, 8, beta1=0.9, lam=0.05, rule=rule, delta=delta)
    extra = {} if rule == "l2" else dict(decay="huber", delta=delta)
    opt = run_sgdw(params, 8, momentum=0.9, weight_decay=0.05, foreach=foreach, **extra)
    for p, x, m in zip(params, x_ref, m_ref):
        torch.testing.assert_close(p.detach(), x, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], m, rtol=1e-12, atol=1e-13)


def test_sgdw_paths_agree_bit_for_bit():
    a, b = params64(), params64()
    run_sgdw(a, 5, weight_decay=0.05, decay="huber", foreach=False)
    run_sgdw(b, 5, weight_decay=0.05, decay="huber", foreach=True)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_momentum_holds_lr_scaled_gradients_unlike_torch_sgd():
    """With a changing lr, SGDW (buffer of lr*g) and torch's SGD (lr times a buffer of g)
    take different steps; the float64 reference above says which one is Algorithm 1."""
    a, b = params64(), params64()
    run_sgdw(a, 4, weight_decay=0.0)
    opt = torch.optim.SGD(b, lr=LR0, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    for t in range(4):
        for p, g in zip(b, grads(t, b)):
            p.grad = g
        opt.step()
        sched.step()
    assert (a[0] - b[0]).abs().max() > 1e-3


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_constant_lr_without_decay_is_torch_sgd(momentum):
    """Constant lr, dampening 0, no decay: m = lr*b, so the two agree; bit for bit without
    momentum (both write p - lr*g), to rounding with it (lr*(beta*b + g) vs beta*lr*b + lr*g)."""
    ours, theirs = params64(), params64()
    opt = SGDW(ours, lr=0.1, momentum=momentum)
    ref = torch.optim.SGD(theirs, lr=0.1, momentum=momentum, dampening=0.0, weight_decay=0.0)
    for t in range(6):
        for p, q, g in zip(ours, theirs, grads(t, ours)):
            p.grad, q.grad = g, g.clone()
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs):
        if momentum == 0.0:
            assert torch.equal(p, q)
        else:
            torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-14)
            torch.testing.assert_close(
                opt.state[p]["momentum_buffer"], 0.1 * ref.state[q]["momentum_buffer"]
            )


def test_maximize_ascends():
    a, b = params64(), params64()
    opt_a = SGDW(a, lr=0.1, weight_decay=0.1, maximize=True)
    opt_b = SGDW(b, lr=0.1, weight_decay=0.1)
    for t in range(3):
        for p, q, g in zip(a, b, grads(t, a)):
            p.grad, q.grad = g, -g
        opt_a.step()
        opt_b.step()
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_resume_from_state_dict_is_bit_exact_with_the_scheduler():
    params = params64()
    opt = SGDW(params, lr=LR0, weight_decay=0.05, decay="huber")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)

    def train(o, s, ps, steps, start):
        for t in range(start, start + steps):
            for p, g in zip(ps, grads(t, ps)):
                p.grad = g
            o.step()
            s.step()

    train(opt, sched, params, 3, 0)
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    copies = [p.detach().clone().requires_grad_() for p in params]
    train(opt, sched, params, 3, 3)

    opt2 = SGDW(copies, lr=LR0, weight_decay=0.05, decay="huber")
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, schedule)
    buffer.seek(0)
    saved = torch.load(buffer)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    train(opt2, sched2, copies, 3, 3)
    assert all(torch.equal(x, y) for x, y in zip(params, copies))
    assert opt2.param_groups[0]["initial_lr"] == LR0


def test_defaults_and_class():
    opt = SGDW(params64())
    assert isinstance(opt, MomentumSGD) and isinstance(opt, torch.optim.Optimizer)
    assert opt.defaults["decay"] == "l2" and opt.defaults["decay_scaling"] == "schedule"
    assert opt.defaults["weight_decay"] == 0.0 and opt.defaults["momentum"] == 0.9
    assert type(pickle.loads(pickle.dumps(opt))) is SGDW
    assert pickle.loads(pickle.dumps(SGDW)) is SGDW


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=0.0), "initial_lr > 0"),
        (dict(lr=0.1, momentum=1.0), "Invalid momentum"),
        (dict(lr=-0.1, decay_scaling="lr"), "Invalid learning rate"),
        (dict(lr=0.1, decay="l1"), "Invalid decay"),
        (dict(lr=0.1, nesterov=True), "unexpected keyword argument 'nesterov'"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SGDW(params64(), **kwargs)
    SGDW(params64(), lr=0.0, decay_scaling="lr")  # no schedule multiplier needed
