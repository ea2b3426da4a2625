"""Where adamhd's optimizers must agree with torch and pytorch_optimizer, and where they differ."""

from __future__ import annotations

import math

import pytest
import torch

from adamhd import SM3, Adafactor
from adamhd.optim.adafactor import inverse_sqrt_factored
from tests.optim import common

SHAPES = [(6, 5), (2, 3, 4), (7,)]


def _train(make_opt, shape, steps=5, dtype=torch.float32, maximize_grads=False):
    p = torch.randn(shape, generator=torch.Generator().manual_seed(4)).to(dtype).requires_grad_()
    opt = make_opt([p])
    common.run(opt, [p], [common.grads_for(shape, steps, 7, dtype)])
    return p.detach()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kw", [dict(), dict(d=2.0, weight_decay=0.1, lr=0.05),
                                dict(eps2=0.5, maximize=True)])
def test_adafactor_agrees_with_torch(shape, kw):
    """Same settings (relative step, parameter scale, eps2, d, decay rate, decoupled lr*wd);
    torch's eps1 clamps never act on gradients ~N(0, 1), nor does our eps1 = 1e-30."""
    torch_kw = dict(lr=kw.get("lr", 1e-2), eps=(None, kw.get("eps2", 1e-3)), d=kw.get("d", 1.0),
                    beta2_decay=-0.8, weight_decay=kw.get("weight_decay", 0.0),
                    maximize=kw.get("maximize", False), foreach=False)
    want = _train(lambda ps: torch.optim.Adafactor(ps, **torch_kw), shape)
    got = _train(lambda ps: Adafactor(ps, **kw), shape)
    torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-7)


def test_adafactor_differs_from_torch_on_tiny_gradients():
    """torch clamps V at eps1**2 (eps1 = float32 epsilon): gradients below ~1e-7 get a capped
    step there; the paper's g**2 + eps1 (1e-30) normalises them like any other."""
    p0 = torch.ones(4, 3)
    g = torch.full((4, 3), 1e-9)
    ours, theirs = p0.clone().requires_grad_(), p0.clone().requires_grad_()
    ours.grad, theirs.grad = g.clone(), g.clone()
    Adafactor([ours], scale_parameter=False).step()
    torch.optim.Adafactor([theirs]).step()
    assert torch.allclose(p0 - ours.detach(), torch.full((4, 3), 1e-2), rtol=1e-5)  # |U| = 1
    assert (p0 - theirs.detach()).abs().max() < 1e-3


@pytest.mark.parametrize("d", [0.25, 4.0])
def test_rms_clip_is_max_one_rms_over_d(d):
    """U = g/sqrt(g**2) = sign(g) on step 1, rms(U) = 1: clipped to rms d for d < 1, left alone
    for d > 1 (a clamp_max(1) of rms/d, pytorch_optimizer's 2026 bug, would scale it up 4x)."""
    p = torch.zeros(8, requires_grad=True)
    p.grad = torch.linspace(-2, 2, 8) + 0.1
    Adafactor([p], lr=1.0, relative_step=False, scale_parameter=False, d=d).step()
    want = -torch.sign(p.grad) * min(1.0, d)
    torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=0)


def test_inverse_sqrt_factored_stays_finite_where_the_plain_ratio_overflows():
    row = torch.tensor([1e-30, 1.0, 2.0])  # a zero-gradient row (eps1 only)
    col = torch.tensor([1e-30, 0.5])  # and a zero-gradient column
    got = inverse_sqrt_factored(row, col)
    r, c = row.double(), col.double()
    want = (r[:, None] * c[None, :] / r.mean()).rsqrt()
    assert torch.isfinite(got).all()
    assert not torch.isfinite(((row.mean() / row)[:, None] / col[None, :]).sqrt()).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_adafactor_agrees_with_pytorch_optimizer(shape):
    po = pytest.importorskip("pytorch_optimizer")
    # its beta2_t is capped at betas[1]; its relative-step cap is a constant 1e-2 (= our lr)
    want = _train(lambda ps: po.AdaFactor(ps, betas=(None, 1.0 - 1e-12), foreach=False), shape)
    got = _train(lambda ps: Adafactor(ps), shape)
    torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-7)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sm3_agrees_with_pytorch_optimizer(momentum):
    """The same SM3-II, also with momentum: pytorch_optimizer 4.1.0 lerps the preconditioned
    update (m = lerp(m, g/sqrt(nu + eps), 1 - momentum)), as ours does (docs/optimizers.md).
    float64: equal to a few ulps."""
    po = pytest.importorskip("pytorch_optimizer")
    for shape in [(5, 4), (2, 3, 4), (6,)]:
        want = _train(lambda ps: po.SM3(ps, lr=0.1, momentum=momentum, beta=0.0), shape,
                      dtype=torch.float64)
        got = _train(lambda ps: SM3(ps, lr=0.1, momentum=momentum), shape, dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


def test_smmf_state_is_far_below_adamw():
    from adamhd import SMMF

    p = torch.zeros(1024, 1024, requires_grad=True)
    p.grad = torch.randn(1024, 1024)
    opt = SMMF([p])
    opt.step()
    nbytes = sum(t.numel() * t.element_size() for t in opt.state[p].values())
    assert opt.state[p]["sign"].dtype == torch.uint8
    assert nbytes / p.numel() == pytest.approx(1 / 8 + 4 * 4 * 1024 / p.numel(), rel=1e-3)
    assert math.isclose(nbytes / p.numel(), 0.1406, rel_tol=1e-3)


def test_sign_packing_layout_and_round_trip():
    from adamhd.optim.smmf import pack_signs, unpack_signs

    flags = torch.tensor([1, 1, 1, 0, 0, 1, 0, 1, 1], dtype=torch.bool)
    assert pack_signs(flags).tolist() == [0b10100111, 0b1]  # flag 8*i + j is bit j of byte i
    for n in (0, 1, 8, 13, 1000):
        x = torch.rand(n, generator=torch.Generator().manual_seed(n)) > 0.5
        assert torch.equal(unpack_signs(pack_signs(x), n), x)
