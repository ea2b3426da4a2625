"""The adaptive threshold: EMA of mean|p|, its non-finite guard, foreach and compiled forms."""

import math

import pytest
import torch

from adamhd.decay import foreach_update_adaptive_threshold, update_adaptive_threshold

NAN, INF = math.nan, math.inf


def ref_ema(mu: float, a: float, beta: float) -> float:
    """The guarded EMA, written out: a non-finite a is skipped; a non-finite mu is replaced."""
    if not math.isfinite(a):
        return mu
    if not math.isfinite(mu):
        return a
    return beta * mu + (1 - beta) * a


def ref_threshold(mu: float, scale: float) -> float:
    return scale * mu if math.isfinite(mu) else INF


CASES = [
    (2.0, 4.0),  # ordinary
    (2.0, NAN),  # a NaN weight: the statistic is skipped
    (2.0, INF),  # an inf weight: skipped
    (2.0, -INF),
    (NAN, 3.0),  # no finite mu yet: the first finite statistic starts the EMA
    (INF, 3.0),
    (NAN, NAN),  # nothing finite: mu stays, the threshold is inf (AdamW's L2)
    (0.0, 0.0),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_guarded_ema_per_tensor_and_foreach(dtype):
    beta, scale = 0.9, 1.5
    mus = [torch.tensor(mu, dtype=dtype) for mu, _ in CASES]
    mus_foreach = [m.clone() for m in mus]
    abs_means = [torch.tensor(a, dtype=dtype) for _, a in CASES]
    single = [update_adaptive_threshold(m, a, beta, scale) for m, a in zip(mus, abs_means)]
    multi = foreach_update_adaptive_threshold(mus_foreach, abs_means, beta, scale)
    for (mu0, a), mu, mu_f, d, d_f in zip(CASES, mus, mus_foreach, single, multi):
        want_mu = ref_ema(mu0, a, beta)
        for got in (mu.item(), mu_f.item()):
            assert got == pytest.approx(want_mu, rel=1e-6, nan_ok=True)
        for got in (d.item(), d_f.item()):
            assert got == pytest.approx(ref_threshold(want_mu, scale), rel=1e-6)


def test_first_update_keeps_mu_at_a1_exactly():
    a = torch.tensor(0.123456789)
    mu = a.clone()
    update_adaptive_threshold(mu, a, 0.99, 1.5)
    assert torch.equal(mu, a)


def test_foreach_equals_per_tensor_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    mus = [torch.rand((), generator=g) for _ in range(5)]
    means = [torch.rand((), generator=g) for _ in range(5)]
    a = [m.clone() for m in mus]
    b = [m.clone() for m in mus]
    da = [update_adaptive_threshold(m, x, 0.95, 2.0) for m, x in zip(a, means)]
    db = foreach_update_adaptive_threshold(b, means, 0.95, 2.0)
    assert all(torch.equal(x, y) for x, y in zip(a + da, b + db))


def test_guard_traces_without_graph_breaks():
    """Tensor ops only (no host sync): compiles as one graph."""
    torch._dynamo.reset()
    step = torch.compile(update_adaptive_threshold, fullgraph=True, backend="eager")
    step_foreach = torch.compile(foreach_update_adaptive_threshold, fullgraph=True,
                                 backend="eager")
    mu = torch.tensor(2.0)
    d = step(mu, torch.tensor(NAN), 0.9, 1.5)
    assert mu.item() == 2.0 and d.item() == 3.0
    mus = [torch.tensor(NAN), torch.tensor(1.0)]
    ds = step_foreach(mus, [torch.tensor(4.0), torch.tensor(INF)], 0.9, 1.5)
    assert [m.item() for m in mus] == [4.0, 1.0]
    assert [x.item() for x in ds] == [6.0, 1.5]
