"""The update bound of arXiv 2505.21910 (``attach_update_bound``): against a float64 reference
with exact singular values (``torch.linalg.svdvals``, brute force), the power iteration's warm
start, state round trip, skipped steps and bad input."""

from __future__ import annotations

import copy

import pytest
import torch

from adamhd import with_decoupled_decay
from adamhd.transforms import attach_update_bound
from adamhd.transforms.bound import power_sigma1

F64 = torch.float64


def make(dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 4, generator=g, dtype=dtype).requires_grad_(),
            torch.randn(4, generator=g, dtype=dtype).requires_grad_(),
            torch.randn(5, 6, generator=g, dtype=dtype).requires_grad_()]


def grads(t, params):
    g = torch.Generator().manual_seed(50 + t)
    # a rank-one part: the kind of step the bound exists for (energy in one direction)
    return [torch.randn(p.shape, generator=g, dtype=F64).to(p.dtype)
            + (3.0 * torch.ones(p.shape, dtype=p.dtype) if p.dim() == 2 and t % 2 else 0.0)
            for p in params]


def run(opt, params, steps, start=0):
    for t in range(start, start + steps):
        for p, g in zip(params, grads(t, params)):
            p.grad = g
        opt.step()


def sgd_bound64(steps, lr, tau, alpha):
    """SGD, then for each matrix: r = sigma1(dW)/sigma1(W_prev) (exact, by SVD); if r > tau the
    step becomes (alpha/r) dW. Vectors are left alone."""
    ps = [p.detach().clone() for p in make()]
    ratios = []
    for t in range(steps):
        gs = grads(t, ps)
        for i, (p, g) in enumerate(zip(ps, gs)):
            d = -lr * g
            if p.dim() == 2:
                r = float(torch.linalg.svdvals(d)[0] / torch.linalg.svdvals(p)[0])
                ratios.append(r)
                if r > tau:
                    d = d * (alpha / r)
            ps[i] = p + d
    return ps, ratios


@pytest.mark.parametrize("alpha", [None, 0.05])
def test_bound_matches_exact_singular_values(alpha):
    params = make()
    opt = torch.optim.SGD(params, lr=0.05)
    attach_update_bound(opt, threshold=0.1, weight=alpha, iters=60)
    run(opt, params, 4)
    want, ratios = sgd_bound64(4, 0.05, 0.1, 0.1 if alpha is None else alpha)
    assert max(ratios) > 0.1 and min(ratios) < 0.1  # bounded on some steps, not on others
    for p, w in zip(params, want):
        torch.testing.assert_close(p.detach(), w, rtol=1e-9, atol=1e-11)


def test_power_iteration_warm_start_converges_over_steps():
    g = torch.Generator().manual_seed(3)
    m = torch.randn(30, 20, generator=g, dtype=F64)
    v = torch.ones(20, dtype=F64) / 20**0.5
    exact = float(torch.linalg.svdvals(m)[0])
    first = float(power_sigma1(m, v, 1))
    for _ in range(40):
        last = float(power_sigma1(m, v, 2))
    assert first < exact * (1 - 1e-3)  # one iteration from a poor start: an underestimate
    assert last == pytest.approx(exact, rel=1e-10)
    assert float(power_sigma1(torch.zeros(3, 20, dtype=F64), v, 2)) == 0.0


def test_bound_on_a_wrapped_optimizer_round_trips_bit_exactly():
    adam = with_decoupled_decay(torch.optim.Adam)

    def build():
        ps = make(torch.float32)
        opt = adam(ps, lr=0.3, weight_decay=0.1)
        attach_update_bound(opt, threshold=0.05, iters=2)
        return ps, opt

    straight, opt = build()
    run(opt, straight, 4)
    assert max(float(opt.state[p]["bound_ratio"]) for p in (straight[0], straight[2])) > 0.05
    half, opt = build()
    run(opt, half, 2)
    saved = copy.deepcopy(opt.state_dict())
    resumed, opt2 = build()
    with torch.no_grad():
        for r, h in zip(resumed, half):
            r.copy_(h)
    opt2.load_state_dict(saved)
    assert torch.equal(opt2.state[resumed[0]]["bound_v_weight"], opt.state[half[0]]
                       ["bound_v_weight"])
    run(opt2, resumed, 2, start=2)
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)
    assert "bound_v_weight" not in opt2.state[resumed[1]]  # the vector is not bounded


def test_skipped_step_changes_nothing():
    params = make(torch.float32)
    opt = torch.optim.Adam(params, lr=0.3, fused=True)
    attach_update_bound(opt, threshold=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)

    def scaled_step(factor):
        opt.zero_grad()
        loss = sum((p * g).sum() for p, g in zip(params, grads(1, params)))
        scaler.scale(loss * factor).backward()
        scaler.step(opt)
        scaler.update()

    scaled_step(1.0)
    state = copy.deepcopy(opt.state[params[0]])
    weights = [p.detach().clone() for p in params]
    scaled_step(float("inf"))
    assert all(torch.equal(p, w) for p, w in zip(params, weights))
    for key, value in state.items():
        assert torch.equal(opt.state[params[0]][key], value), key


def test_bad_input_is_named_before_attaching():
    params = make()
    opt = torch.optim.SGD(params, lr=0.1)
    for kw, match in [(dict(threshold=0.0), "threshold"), (dict(weight=0.5), "weight"),
                      (dict(iters=0), "iters"), (dict(params=[params[1]]), "2-D"),
                      (dict(params=[torch.zeros(2, 2)]), "not in the optimizer")]:
        with pytest.raises(ValueError, match=match):
            attach_update_bound(opt, **kw)
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
