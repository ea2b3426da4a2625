"""One non-finite gradient element costs AdamHD that element only, as in AdamW (issue 12.9).

Before the guard, the NaN weight made mean|p| NaN, then delta_mu NaN for good, and the clamp wrote
NaN into every element of the tensor at every later step, even after the weights were repaired.
"""

import math

import pytest
import torch

from adamhd import AdamHD
from tests.decay.reference import ReferenceAdamDecay

F64 = torch.float64
PATHS = {"single": dict(foreach=False, fused=False), "foreach": dict(foreach=True, fused=False)}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("form", ["explicit", "proximal"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_one_nonfinite_gradient_element(path, form, bad):
    n, steps, bad_step, repair_step, k = 40, 10, 3, 6, 7
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(n, generator=gen, dtype=F64)
    gs = [torch.randn(n, generator=gen, dtype=F64) for _ in range(steps)]
    gs[bad_step][k] = bad

    p = p0.clone().requires_grad_()
    q = p0.clone().requires_grad_()
    opt = AdamHD([p], lr=0.02, weight_decay=0.5, decay_form=form, **PATHS[path])
    adamw = torch.optim.AdamW([q], lr=0.02, weight_decay=0.5, foreach=path == "foreach")
    ref = ReferenceAdamDecay(p0, weight_decay=0.5, decay_form=form)
    mus = []
    for t in range(steps):
        if t == repair_step:  # the user repairs the weight and its moments
            for x in (p.data, q.data, opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"],
                      adamw.state[q]["exp_avg"], adamw.state[q]["exp_avg_sq"]):
                x.nan_to_num_(0.0, 0.0, 0.0)
            ref.p.nan_to_num_(0.0, 0.0, 0.0)
            ref.m.nan_to_num_(0.0, 0.0, 0.0)
            ref.v.nan_to_num_(0.0, 0.0, 0.0)
        p.grad, q.grad = gs[t].clone(), gs[t].clone()
        opt.step()
        adamw.step()
        ref.step(gs[t], 0.02)
        mu = opt.state[p]["delta_mu"]
        assert math.isfinite(mu.item())
        mus.append(mu.item())
        broken = ~torch.isfinite(p.detach())
        # AdamHD loses exactly the elements AdamW loses: one, from the bad step to the repair
        assert torch.equal(broken, ~torch.isfinite(q.detach()))
        assert int(broken.sum()) == (1 if bad_step <= t < repair_step else 0)
        # and every other element is where the guarded reference puts it
        finite = ~broken
        torch.testing.assert_close(p.detach()[finite], ref.p[finite], rtol=1e-12, atol=1e-14)
        assert mu.item() == pytest.approx(ref.mu, rel=1e-12)
    # mean|p| was not finite on the steps after the bad one, so mu stood still, then moved again
    assert mus[bad_step] != mus[bad_step - 1]
    assert all(m == mus[bad_step] for m in mus[bad_step + 1 : repair_step])
    assert mus[repair_step] != mus[repair_step - 1]


@pytest.mark.parametrize("path", PATHS)
def test_nonfinite_weight_from_the_start(path):
    """mu_1 = mean|p_1| is NaN: the threshold is inf (AdamW's L2) until a finite mean appears."""
    p0 = torch.tensor([1.0, math.nan, -2.0, 0.5], dtype=F64)
    p = p0.clone().requires_grad_()
    q = p0.clone().requires_grad_()
    opt = AdamHD([p], lr=0.1, weight_decay=0.5, **PATHS[path])
    adamw = torch.optim.AdamW([q], lr=0.1, weight_decay=0.5, foreach=path == "foreach")
    g = torch.tensor([0.3, 0.1, -0.2, 0.4], dtype=F64)
    for _ in range(2):
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        adamw.step()
        torch.testing.assert_close(p.detach(), q.detach(), equal_nan=True, rtol=1e-15, atol=0)
    p.data.nan_to_num_(0.0)
    opt.state[p]["exp_avg"].nan_to_num_(0.0)
    opt.state[p]["exp_avg_sq"].nan_to_num_(0.0)
    expected_mu = p.detach().abs().mean().item()
    p.grad = g.clone()
    opt.step()
    assert opt.state[p]["delta_mu"].item() == expected_mu  # the first finite mean starts the EMA
    assert torch.isfinite(p).all()
