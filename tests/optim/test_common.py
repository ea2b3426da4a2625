"""What every optimizer of adamhd.optim must do: resume bit for bit, leave parameters without
gradients alone, handle 0-size/0-dim/non-contiguous/bf16 tensors, compile, reject bad input."""

from __future__ import annotations

import math

import pytest
import torch

from adamhd.optim._base import stat_dtype
from tests.optim import common

NAMES = list(common.CASES)


def make(name, params, **override):
    cls, kwargs = common.CASES[name]
    return cls(params, **{**kwargs, **override})


def tensors(dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(s, generator=g).to(dtype).requires_grad_() for s in [(4, 6), (5,), ()]]


def grads(params, n, seed=0):
    return [common.grads_for(p.shape, n, seed + i, p.dtype) for i, p in enumerate(params)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_is_bit_exact(name, dtype):
    gs = grads(tensors(dtype), 6)
    straight = tensors(dtype)
    opt = make(name, straight)
    common.run(opt, straight, gs, common.losses(6))

    first = tensors(dtype)
    opt1 = make(name, first)
    common.run(opt1, first, [g[:3] for g in gs], common.losses(6)[:3])
    saved = common.snapshot(first, opt1)
    resumed = [p.detach().clone().requires_grad_() for p in saved[0]]
    opt2 = make(name, resumed)
    opt2.load_state_dict(saved[1])
    common.assert_state_equal(opt2.state_dict()["state"], saved[1]["state"])
    for p in resumed:  # statistics stay float32 for bf16 weights
        for key in opt2.stat_keys:
            if key in opt2.state[p]:
                assert opt2.state[p][key].dtype == stat_dtype(p)
    common.run(opt2, resumed, [g[3:] for g in gs], common.losses(6)[3:])
    assert all(torch.equal(a, b) for a, b in zip(resumed, straight))
    common.assert_state_equal(opt2.state_dict()["state"], opt.state_dict()["state"])


@pytest.mark.parametrize("name", NAMES)
def test_params_without_grad_are_untouched(name):
    params = tensors()
    opt = make(name, params)
    common.run(opt, params[:1], grads(params[:1], 2))
    before = params[1].detach().clone()
    params[1].grad = None
    common.step(opt)
    assert torch.equal(params[1], before) and params[1] not in opt.state
    assert len(opt.state) == 1


@pytest.mark.parametrize("name", NAMES)
def test_zero_size_zero_dim_and_non_contiguous(name):
    base = torch.randn(6, 4, dtype=torch.float64)
    strided = base.t().contiguous().t().requires_grad_()  # transposed strides
    assert not strided.is_contiguous()
    contiguous = base.clone().requires_grad_()
    empty, scalar = torch.zeros(0, 3, requires_grad=True), torch.tensor(0.5, requires_grad=True)
    gs = common.grads_for((6, 4), 3)
    a, b = make(name, [strided, empty, scalar]), make(name, [contiguous])
    for t in range(3):
        strided.grad = gs[t].t().contiguous().t()
        contiguous.grad = gs[t].clone()
        empty.grad, scalar.grad = torch.zeros(0, 3), torch.tensor(0.25 * (t + 1))
        common.step(a)
        common.step(b)
    torch.testing.assert_close(strided.detach(), contiguous.detach(), rtol=1e-14, atol=0)
    assert empty.shape == (0, 3) and math.isfinite(scalar.item()) and scalar.item() != 0.5
    assert all(torch.isfinite(v).all() for s in a.state.values() for v in s.values()
               if torch.is_tensor(v) and v.is_floating_point())


@pytest.mark.parametrize("name", NAMES)
def test_bf16_tracks_float32(name):
    p32, p16 = tensors(torch.float32), tensors(torch.bfloat16)
    gs = grads(p32, 3)
    common.run(make(name, p32), p32, gs, common.losses(3))
    common.run(make(name, p16), p16, [[g.bfloat16() for g in x] for x in gs], common.losses(3))
    for a, b in zip(p16, p32):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b.detach(), rtol=0.03, atol=0.03)


@pytest.mark.parametrize("name", NAMES)
def test_compiled_step_equals_eager(name):
    import torch._dynamo

    torch._dynamo.reset()
    eager, compiled = tensors(), tensors()
    gs = grads(eager, 3)
    common.run(make(name, eager), eager, gs, common.losses(3))
    opt = make(name, compiled)
    step = torch.compile(common.step, backend="aot_eager")
    for t in range(3):
        for p, g in zip(compiled, gs):
            p.grad = g[t].clone()
        step(opt, common.losses(3)[t])
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


BAD = {
    "nsgda": [dict(lr=-1.0), dict(momentum=1.0), dict(eps=-1.0), dict(weight_decay=math.nan),
              dict(lr=torch.ones(2))],
    "adalo": [dict(betas=(1.0, 0.9)), dict(betas=(0.9,)), dict(kappa=0.0),
              dict(mode="both"), dict(weight_decay=-0.1)],
    "adafactor": [dict(d=0.0), dict(decay_rate=0.5), dict(eps2=-1.0), dict(lr=math.inf)],
    "smmf": [dict(beta=-0.1), dict(growth_rate=0.0), dict(decay_rate=-2.0), dict(eps=True)],
    "sm3": [dict(momentum=-0.5), dict(eps=math.inf), dict(lr="0.1")],
    "adamomentum": [dict(betas=(0.9, 1.0)), dict(eps=0.0), dict(weight_decay=-1.0)],
    "fcadam": [dict(alpha=0.0), dict(history=0), dict(drop=1), dict(betas=(0.9,))],
    "amos": [dict(beta=1.0), dict(eta=0.0), dict(weight_decay=-1.0), dict(cautious_decay=1)],
}


@pytest.mark.parametrize("name", NAMES)
def test_bad_hyperparameters_raise_before_any_change(name):
    params = tensors()
    opt = make(name, params)
    common.run(opt, params, grads(params, 1))
    before = common.snapshot(params, opt)
    for bad in BAD[name]:
        key = next(iter(bad))
        with pytest.raises(ValueError, match=key if key != "betas" else "beta"):
            make(name, tensors(), **bad)
        with pytest.raises(ValueError):
            opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], **bad})
    assert len(opt.param_groups) == 1
    params[0].grad = torch.ones(4, 6).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        common.step(opt)
    after = common.snapshot(params, opt)
    assert all(torch.equal(a, b) for a, b in zip(after[0], before[0]))
    common.assert_state_equal(after[1]["state"], before[1]["state"])


def test_adalo_without_a_loss_raises_before_any_change():
    from adamhd import AdaLo

    p = torch.ones(3, requires_grad=True)
    p.grad = torch.ones(3)
    opt = AdaLo([p])
    with pytest.raises(ValueError, match="needs the loss"):
        opt.step()
    assert torch.equal(p, torch.ones(3)) and not opt.state


@pytest.mark.parametrize("name", ["fcadam"])  # Adafactor, SMMF, SM3 take DTensors (issue 20)
def test_dtensor_params_are_rejected_clearly(name, monkeypatch):
    import adamhd.optim._base as base

    p = torch.zeros(3, requires_grad=True)
    monkeypatch.setattr(base, "is_dtensor", lambda t: t is p)
    with pytest.raises(RuntimeError, match="DTensor"):
        make(name, [p])


@pytest.mark.parametrize("name", NAMES)
def test_gradscaler_skipped_step_changes_nothing(name):
    from adamhd import AdaLo

    params = tensors()
    opt = make(name, params)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    kwargs = {"loss": 1.0} if isinstance(opt, AdaLo) else {}
    for t in range(2):
        scaler.scale(torch.zeros(()))  # GradScaler's scale tensor is made lazily here
        for p in params:
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(t)) * 8.0
        if t == 1:
            params[0].grad[0, 0] = math.nan
            before = common.snapshot(params, opt)
        scaler.step(opt, **kwargs)
        scaler.update()
    assert scaler.get_scale() == 4.0
    after = common.snapshot(params, opt)
    assert all(torch.equal(a, b) for a, b in zip(after[0], before[0]))
    common.assert_state_equal(after[1]["state"], before[1]["state"])
