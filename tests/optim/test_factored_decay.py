"""Adafactor, SM3 and SMMF's own ``weight_decay`` through the decay rules (adamhd.decay.native):
the default is the former decoupled L2 bit for bit (the old formula written here), Huber matches
the float64 references with a decay hook, and cautious decay masks with the update's sign."""

from __future__ import annotations

import pytest
import torch

from adamhd import SM3, SMMF, Adafactor
from tests.optim import common, reference

F64 = torch.float64
SHAPES = [(5, 7), (3, 4, 6), (9,), ()]
STEPS = 4
CASES = {  # Adafactor without scale_parameter: its step size would read the decayed weight
    "adafactor": (Adafactor, dict(lr=0.05, weight_decay=0.5, scale_parameter=False)),
    "sm3": (SM3, dict(lr=0.05, momentum=0.5, weight_decay=0.5)),
    "smmf": (SMMF, dict(lr=0.05, weight_decay=0.5)),
}


def _weights(dtype):
    gen = torch.Generator().manual_seed(7)
    return [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in SHAPES]


def _grads():
    return [common.grads_for(s, STEPS, seed=i) for i, s in enumerate(SHAPES)]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(CASES))
def test_default_is_the_former_l2_bit_for_bit(name, dtype, foreach):
    cls, kwargs = CASES[name]
    lr, wd = kwargs["lr"], kwargs["weight_decay"]
    new, old, grads = _weights(dtype), _weights(dtype), _grads()
    common.run(cls(new, foreach=foreach, **kwargs), new, grads)
    opt = cls(old, foreach=foreach, **{**kwargs, "weight_decay": 0.0})
    for t in range(STEPS):
        for p, gs in zip(old, grads):
            p.grad = gs[t].to(dtype)
        with torch.no_grad():  # the former decay, then the step without it
            if foreach:
                torch._foreach_mul_(old, 1.0 - lr * wd)
            else:
                for p in old:
                    p.mul_(1.0 - lr * wd)
        opt.step()
    for a, b in zip(new, old):
        assert torch.equal(a, b), (a.shape, (a - b).abs().max())


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("delta", [0.3, "adaptive"])
@pytest.mark.parametrize("name", list(CASES))
def test_huber_matches_float64_reference(name, delta, foreach):
    cls, kwargs = CASES[name]
    for shape in SHAPES if name != "sm3" else [(3, 2, 4), (7,), ()]:
        grads = common.grads_for(shape, STEPS)
        p0 = torch.randn(shape, generator=torch.Generator().manual_seed(9), dtype=F64)
        p = p0.clone().requires_grad_()
        opt = cls([p], foreach=foreach, decay="huber", delta=delta, **kwargs)
        common.run(opt, [p], [grads])
        tau = kwargs["lr"] * kwargs["weight_decay"]
        hook = reference.huber_explicit(tau, None if delta == "adaptive" else delta)
        ref_kwargs = {k: v for k, v in kwargs.items() if k != "weight_decay"}
        want, _ = getattr(reference, name)(p0, grads, decay=hook, **ref_kwargs)
        torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-13, msg=str(shape))
        assert ("delta_mu" in opt.state[p]) == (delta == "adaptive")


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", list(CASES))
def test_cautious_huber_decays_where_the_update_agrees(name, foreach):
    """One step from the same weights: the update ``u`` from a run without decay, then
    ``p_t - tau*clip(p_t, -d, d)`` only where ``sign(u)*p_t >= 0`` (explicit form)."""
    cls, kwargs = CASES[name]
    tau, delta = kwargs["lr"] * kwargs["weight_decay"], 0.3
    p0 = torch.randn(6, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    g = torch.randn(6, 5, generator=torch.Generator().manual_seed(3), dtype=F64)
    plain = p0.clone().requires_grad_()
    plain.grad = g.clone()
    cls([plain], foreach=foreach, **{**kwargs, "weight_decay": 0.0}).step()
    step = p0 - plain.detach()  # lr*u
    p = p0.clone().requires_grad_()
    p.grad = g.clone()
    cls([p], foreach=foreach, decay="huber", delta=delta, cautious_decay=True, **kwargs).step()
    agree = step * p0 >= 0
    want = torch.where(agree, p0 - tau * p0.clamp(-delta, delta), p0) - step
    torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-13)
    assert 0 < int(agree.sum()) < agree.numel()  # the mask is not all of one kind


@pytest.mark.parametrize("name", list(CASES))
def test_bad_decay_option_is_refused_before_any_change(name):
    cls, kwargs = CASES[name]
    p = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match="delta"):
        cls([p], decay="huber", delta=-1.0, **kwargs)
    with pytest.raises(TypeError, match="bogus"):
        cls([p], bogus=1, **kwargs)
