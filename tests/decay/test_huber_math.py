"""The decay rules: closed forms against brute force, and the forms against each other."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adamhd import decay
from tests.core.reference import huber, prox_huber

finite = st.floats(min_value=-50, max_value=50, allow_nan=False, allow_infinity=False)
taus = st.floats(min_value=1e-6, max_value=5.0)
deltas = st.floats(min_value=1e-3, max_value=10.0)


def brute_force_prox(q: float, tau: float, d: float) -> float:
    """argmin_z 0.5*(z-q)^2 + tau*H_d(z) by ternary search on the convex objective, in float64."""

    def f(z: float) -> float:
        return 0.5 * (z - q) ** 2 + tau * float(huber(torch.tensor(z, dtype=torch.float64), d))

    lo, hi = -abs(q) - 1.0, abs(q) + 1.0
    for _ in range(200):
        m1, m2 = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if f(m1) < f(m2):
            hi = m2
        else:
            lo = m1
    return 0.5 * (lo + hi)


@settings(max_examples=150, deadline=None)
@given(q=finite, tau=taus, d=deltas)
def test_proximal_step_is_the_argmin(q, tau, d):
    x = torch.tensor([q], dtype=torch.float64)
    decay.huber_proximal_(x, tau, d)
    expected = brute_force_prox(q, tau, d)
    # A search on function values locates a quadratic minimum to about sqrt(machine eps).
    assert math.isclose(x.item(), expected, rel_tol=1e-6, abs_tol=1e-6)
    # and it is the paper's piecewise formula
    paper = prox_huber(torch.tensor([q], dtype=torch.float64), tau, d).item()
    assert math.isclose(x.item(), paper, rel_tol=1e-12, abs_tol=1e-12)


@settings(max_examples=150, deadline=None)
@given(q=finite, tau=taus, d=deltas)
def test_proximal_step_satisfies_the_optimality_condition(q, tau, d):
    """z = prox(q) solves z + tau*clip(z, -d, d) = q (Huber is differentiable)."""
    z = torch.tensor([q], dtype=torch.float64)
    decay.huber_proximal_(z, tau, d)
    residual = z + tau * torch.clamp(z, -d, d) - q
    assert abs(residual.item()) <= 1e-12 * max(1.0, abs(q))


@settings(max_examples=150, deadline=None)
@given(p=finite, tau=st.floats(min_value=0.0, max_value=1.0), d=deltas)
def test_explicit_step_is_a_gradient_step_on_huber(p, tau, d):
    x = torch.tensor([p], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(huber(x, d).sum(), x)
    expected = p - tau * grad.item()  # the Huber gradient is clip(p, -d, d)
    y = x.detach().clone()
    decay.huber_explicit_(y, tau, d)
    assert math.isclose(y.item(), expected, rel_tol=1e-12, abs_tol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    tau=taus,
    form=st.sampled_from(["explicit", "proximal"]),
    tensor_delta=st.booleans(),
)
def test_foreach_forms_equal_per_tensor_forms(seed, tau, form, tensor_delta):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(s, generator=g, dtype=torch.float64) * 3 for s in [(4, 5), (7,), ()]]
    ds = [0.5, 1.0, 2.0]
    if tensor_delta:
        ds = [torch.tensor(d, dtype=torch.float64) for d in ds]
    rule = decay.HuberDecay(delta=1.0, form=form)
    single = [x.clone() for x in xs]
    multi = [x.clone() for x in xs]
    rule.apply_(single, tau, ds, foreach=False)
    rule.apply_(multi, tau, ds, foreach=True)
    for a, b in zip(single, multi):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)


def test_small_weights_get_l2_large_weights_get_a_capped_pull():
    x = torch.tensor([0.1, -0.2, 3.0, -4.0], dtype=torch.float64)
    decay.huber_explicit_(x, 0.01, 1.0)
    torch.testing.assert_close(
        x, torch.tensor([0.1 * 0.99, -0.2 * 0.99, 3.0 - 0.01, -4.0 + 0.01], dtype=torch.float64)
    )


def test_adaptive_threshold_ema():
    p = torch.tensor([1.0, -3.0])  # mean |p| = 2
    mu = decay.mean_abs(p).clone()
    d1 = decay.update_adaptive_threshold(mu, decay.mean_abs(p), beta=0.9, scale=1.5)
    assert mu.item() == 2.0 and d1.item() == 3.0
    d2 = decay.update_adaptive_threshold(mu, torch.tensor(4.0), beta=0.9, scale=1.5)
    assert math.isclose(mu.item(), 0.9 * 2 + 0.1 * 4, rel_tol=1e-6)
    assert math.isclose(d2.item(), 1.5 * 2.2, rel_tol=1e-6)
    many = [torch.randn(3, 4), torch.randn(5), torch.randn(0)]
    for got, x in zip(decay.foreach_mean_abs(many), many):
        expected = x.abs().mean().item() if x.numel() else 0.0
        assert math.isclose(got.item(), expected, rel_tol=1e-6)


def test_mean_abs_is_accurate_on_large_tensors():
    """float32 accumulation of millions of |p| drifts ~1e-4; the statistics must not."""
    p = torch.randn(3_000_001, generator=torch.Generator().manual_seed(0)) * 0.1
    exact = p.double().abs().mean().item()
    assert math.isclose(decay.mean_abs(p).item(), exact, rel_tol=1e-6)
    assert math.isclose(decay.foreach_mean_abs([p])[0].item(), exact, rel_tol=1e-6)
