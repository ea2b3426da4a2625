"""AM-SGD (AdaptiveMemorySGD, arXiv 2510.04988): a float64 reference written here from the
update equations over the concatenation of all parameters, the step as the minimiser of the
two-plane proximal model by brute force, clipping, resume bit for bit, refusals before any change.
Not in the shared harness (tests/optim/common.py): its beta is one statistic of all parameters,
so the harness's "one tensor alone = the same tensor among others" tests do not apply."""

from __future__ import annotations

import pytest
import torch

from adamhd import AdaptiveMemorySGD, with_decoupled_decay
from tests.optim import common

F64 = torch.float64
SHAPES = [(5, 7), (3, 4, 2), (9,), ()]


def reference(ps, grads, lrs, wds, lam, beta_max, maximize=False):
    """Float64, from the equations: x and d as one flat vector each; beta from its inner products;
    d_1 = g_1; lr and decoupled decay per tensor. Returns weights, directions and each beta."""
    sizes = [p.numel() for p in ps]
    x = torch.cat([p.to(F64).reshape(-1) for p in ps])
    lr = torch.cat([torch.full((n,), a, dtype=F64) for n, a in zip(sizes, lrs)])
    wd = torch.cat([torch.full((n,), w, dtype=F64) for n, w in zip(sizes, wds)])
    d, betas = None, []
    for t in range(len(grads[0])):
        g = torch.cat([gs[t].to(F64).reshape(-1) for gs in grads]) * (-1 if maximize else 1)
        if d is None:
            d = g.clone()
        else:
            num = (1 + lam) * (g @ d) - (d - g) @ (g + lam * d)
            den = (d - g) @ (d - g)
            beta = min(max(float(num / den), 0.0), beta_max) if den > 0 else 0.0
            betas.append(beta)
            d = (beta + lam) / (1 + lam) * d + (1 - beta) / (1 + lam) * g
        x = x * (1 - lr * wd) - lr * d
    split = lambda v: [c.reshape(p.shape) for c, p in zip(v.split(sizes), ps)]  # noqa: E731
    return split(x), split(d), betas


def _params(dtype=F64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=F64).to(dtype) for s in SHAPES]


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("lam,beta_max", [(0.1, 0.9), (0.0, 0.99), (1.5, 0.5)])
def test_matches_the_float64_reference_over_two_groups(lam, beta_max, maximize):
    p0 = _params()
    grads = [common.grads_for(p.shape, 10, seed=i) for i, p in enumerate(p0)]
    lrs, wds = [0.05, 0.05, 0.2, 0.2], [0.1, 0.1, 0.0, 0.0]
    ps = [p.clone().requires_grad_() for p in p0]
    opt = AdaptiveMemorySGD([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.2,
                                                  "weight_decay": 0.0}],
                            lr=0.05, lam=lam, beta_max=beta_max, weight_decay=0.1,
                            maximize=maximize)
    common.run(opt, ps, grads)
    want, dirs, betas = reference(p0, grads, lrs, wds, lam, beta_max, maximize)
    for p, w, s, d in zip(ps, want, (opt.state[p] for p in ps), dirs):
        torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(s["direction"], d, rtol=1e-12, atol=1e-13)
    assert any(0.0 < b < beta_max for b in betas)  # beta moves, not only clipped


def test_float32_tracks_the_reference():
    p0 = _params()
    grads = [common.grads_for(p.shape, 8, seed=i) for i, p in enumerate(p0)]
    ps = [p.float().requires_grad_() for p in p0]
    common.run(AdaptiveMemorySGD(ps, lr=0.05, weight_decay=0.1), ps, grads)
    want, _, _ = reference(p0, grads, [0.05] * 4, [0.1] * 4, 0.1, 0.9)
    for p, w in zip(ps, want):
        torch.testing.assert_close(p.detach().double(), w, rtol=1e-5, atol=1e-5)


def test_step_minimises_the_two_plane_model():
    """x_new - x = -lr*d_new minimises max(l_g, l_d) + |u|^2/(2 lr) + lam |u + lr d|^2/(2 lr),
    l_g = <g,u>, l_d = lr<g,d> + <d,u> (u = x - x_t): checked on a grid of the dual weight and by
    perturbing the primal point."""
    lr, lam = 0.3, 0.4
    gen = torch.Generator().manual_seed(4)
    for _ in range(20):
        g1, g2 = torch.randn(2, 6, generator=gen, dtype=F64)
        p = torch.zeros(6, dtype=F64, requires_grad=True)
        opt = AdaptiveMemorySGD([p], lr=lr, lam=lam, beta_max=0.999999)
        p.grad = g1.clone()
        opt.step()
        x_t, d = p.detach().clone(), g1
        p.grad = g2.clone()
        opt.step()
        u = p.detach() - x_t

        def model(u, g=g2, d=d):
            return (max(float(g @ u), lr * float(g @ d) + float(d @ u)) + float(u @ u) / (2 * lr)
                    + lam * float((u + lr * d) @ (u + lr * d)) / (2 * lr))

        best = model(u)
        for _ in range(100):
            assert model(u + 1e-4 * torch.randn(6, generator=gen, dtype=F64)) >= best - 1e-12
        b = torch.linspace(0, 1, 100001, dtype=F64)[:, None]
        c = g2 + lam * d + b * (d - g2)
        dual = b[:, 0] * lr * float(g2 @ d) - lr / (2 * (1 + lam)) * (c * c).sum(1)
        want = -lr * (g2 + lam * d + float(b[dual.argmax()]) * (d - g2)) / (1 + lam)
        torch.testing.assert_close(u, want, rtol=0, atol=1e-4)


def test_beta_is_clipped_to_beta_max_and_zero():
    p = torch.zeros(4, dtype=F64, requires_grad=True)
    opt = AdaptiveMemorySGD([p], lr=1.0, lam=0.1, beta_max=0.7)
    g = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    for grad, beta in [(g, None), (2 * g, 0.7), (g, None)]:
        before = opt.state[p]["direction"].clone() if opt.state else None
        p.grad = grad.clone()
        opt.step()
        if beta is not None:  # (|g|^2 + 2 lam <g,d> - lam |d|^2)/|d-g|^2 = 4.3 > 0.7
            want = (beta + 0.1) / 1.1 * before + (1 - beta) / 1.1 * grad
            torch.testing.assert_close(opt.state[p]["direction"], want, rtol=1e-15, atol=0)
    # now d = 1.7/1.1*0.7... ; a gradient equal to d gives |d-g| = 0: beta = 0, d unchanged
    d = opt.state[p]["direction"].clone()
    p.grad = d.clone()
    opt.step()
    torch.testing.assert_close(opt.state[p]["direction"], d, rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("wrapped", [False, True])
def test_state_dict_round_trip_is_bit_exact(dtype, wrapped):
    cls = with_decoupled_decay(AdaptiveMemorySGD) if wrapped else AdaptiveMemorySGD
    kw = dict(lr=0.05, weight_decay=0.1, **({"decay": "huber"} if wrapped else {}))
    grads = [common.grads_for(s, 6, seed=i, dtype=dtype) for i, s in enumerate(SHAPES)]

    def make():
        ps = [p.requires_grad_() for p in _params(dtype)]
        return ps, cls(ps, **kw)

    (ps, straight), (qs, half) = make(), make()
    common.run(straight, ps, grads)
    common.run(half, qs, [g[:3] for g in grads])
    saved = common.snapshot(qs, half)
    rs, resumed = make()
    with torch.no_grad():
        for r, q in zip(rs, saved[0]):
            r.copy_(q)
    resumed.load_state_dict(saved[1])
    common.assert_state_equal(resumed.state_dict()["state"], saved[1]["state"])
    common.run(resumed, rs, [g[3:] for g in grads])
    assert all(torch.equal(a, b) for a, b in zip(rs, ps))
    common.assert_state_equal(resumed.state_dict()["state"], straight.state_dict()["state"])


def test_bad_input_is_refused_before_any_change(monkeypatch):
    ps = [p.float().requires_grad_() for p in _params()]
    opt = AdaptiveMemorySGD(ps, lr=0.05)
    common.run(opt, ps, [common.grads_for(p.shape, 2, seed=i, dtype=torch.float32)
                         for i, p in enumerate(ps)])
    before = common.snapshot(ps, opt)
    for bad in [dict(lr=-1.0), dict(lam=-0.1), dict(lam=float("inf")), dict(beta_max=1.0),
                dict(weight_decay=-1.0), dict(lr=torch.ones(2))]:
        key = next(iter(bad))
        with pytest.raises(ValueError, match=key if key != "lr" else "lr|learning rate"):
            AdaptiveMemorySGD(ps, **bad)
        with pytest.raises(ValueError):
            opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], **bad})
    with pytest.raises(ValueError, match="lam=0.5 differs"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "lam": 0.5})
    assert len(opt.param_groups) == 1
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.param_groups[0]["beta_max"] = 1.5  # edited after construction
    with pytest.raises(ValueError, match="beta_max"):
        opt.step()
    opt.param_groups[0]["beta_max"] = 0.9
    ps[0].grad = ps[0].grad.to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    after = common.snapshot(ps, opt)
    assert all(torch.equal(a, b) for a, b in zip(after[0], before[0]))
    common.assert_state_equal(after[1]["state"], before[1]["state"])
    import adamhd.optim._base as base

    q = torch.zeros(3, requires_grad=True)
    monkeypatch.setattr(base, "is_dtensor", lambda t: t is q)
    with pytest.raises(RuntimeError, match="AdaptiveMemorySGD does not support DTensor"):
        AdaptiveMemorySGD([q])


def test_params_without_grad_and_a_group_added_later():
    ps = [p.float().requires_grad_() for p in _params()]
    opt = AdaptiveMemorySGD(ps[:2], lr=0.05)
    for p in ps[:2]:
        p.grad = torch.ones_like(p)
    opt.step()
    opt.add_param_group({"params": ps[2:]})
    frozen = ps[1].detach().clone()
    ps[1].grad = None
    for p in ps[2:]:
        p.grad = torch.full_like(p, 2.0)
    start = [p.detach().clone() for p in ps[2:]]
    opt.step()
    assert torch.equal(ps[1], frozen) and "direction" in opt.state[ps[1]]
    for p, s in zip(ps[2:], start):  # first step of the new group: d = g
        torch.testing.assert_close(p.detach(), s - 0.05 * 2.0, rtol=0, atol=1e-7)


def test_a_nonfinite_gradient_gives_beta_zero_and_stays_in_its_tensor():
    ps = [torch.ones(3, dtype=F64, requires_grad=True), torch.ones(2, dtype=F64,
                                                                    requires_grad=True)]
    opt = AdaptiveMemorySGD(ps, lr=0.1, lam=0.1)
    common.run(opt, ps, [[torch.full((3,), 1.0, dtype=F64)], [torch.full((2,), 2.0, dtype=F64)]])
    d = opt.state[ps[1]]["direction"].clone()
    ps[0].grad = torch.tensor([1.0, float("inf"), 0.0], dtype=F64)
    ps[1].grad = torch.full((2,), 3.0, dtype=F64)
    opt.step()
    torch.testing.assert_close(opt.state[ps[1]]["direction"], (0.1 * d + ps[1].grad) / 1.1,
                               rtol=1e-15, atol=0)
    assert torch.isfinite(ps[1]).all() and not torch.isfinite(ps[0]).all()
