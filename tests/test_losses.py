"""soft_median: its definition against a float64 reference, and its properties."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adamhd import soft_median


def reference(values: list[float], temperature: float | None = None) -> float:
    """Written from the formula: sorted losses weighted by softmax(-|i - (n-1)/2| / T)."""
    n = len(values)
    if temperature is None:
        temperature = max(0.1, 0.5 * statistics.stdev(values)) if n > 1 else 0.1
    logits = [-abs(i - (n - 1) / 2) / temperature for i in range(n)]
    top = max(logits)
    weights = [math.exp(v - top) for v in logits]
    return sum(w * x for w, x in zip(weights, sorted(values))) / sum(weights)


losses = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=12)


@settings(max_examples=80, deadline=None)
@given(values=losses, temperature=st.one_of(st.none(), st.floats(1e-3, 1e3)))
def test_matches_reference(values, temperature):
    got = soft_median(torch.tensor(values, dtype=torch.float64), temperature)
    assert got.item() == pytest.approx(reference(values, temperature), rel=1e-9, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(values=losses)
def test_tends_to_the_median_as_temperature_goes_to_zero(values):
    x = torch.tensor(values, dtype=torch.float64)
    # rank distances are multiples of 1/2: exp(-0.5/1e-3) underflows the other weights to 0
    assert soft_median(x, 1e-3).item() == pytest.approx(statistics.median(values), abs=1e-9)
    assert soft_median(x, 1e-3).item() == pytest.approx(torch.quantile(x, 0.5).item(), abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(values=losses, temperature=st.one_of(st.none(), st.floats(1e-3, 1e6)))
def test_bounded_by_min_and_max(values, temperature):
    x = torch.tensor(values, dtype=torch.float64)
    got = soft_median(x, temperature).item()
    assert min(values) - 1e-9 <= got <= max(values) + 1e-9


@settings(max_examples=40, deadline=None)
@given(values=losses, seed=st.integers(0, 1000), shift=st.floats(-100, 100))
def test_permutation_invariant_and_shift_equivariant(values, seed, shift):
    x = torch.tensor(values, dtype=torch.float64)
    perm = torch.randperm(len(values), generator=torch.Generator().manual_seed(seed))
    assert soft_median(x[perm], 0.7).item() == pytest.approx(soft_median(x, 0.7).item(), abs=1e-9)
    shifted = soft_median(x + shift, 0.7).item()
    assert shifted == pytest.approx(soft_median(x, 0.7).item() + shift, abs=1e-7)


def test_large_temperature_gives_the_mean_and_outliers_get_little_weight():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 1000.0], dtype=torch.float64)
    assert soft_median(x, 1e9).item() == pytest.approx(x.mean().item(), rel=1e-6)
    assert soft_median(x, 0.5).item() < 80.0  # the mean is 202


def test_differentiable_with_rank_weights_as_gradient():
    x = torch.tensor([0.3, 2.0, 1.1, 0.7], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: soft_median(t, 0.8), (x,))
    soft_median(x).backward()  # the default T is detached: d/dx_i is x_i's rank weight
    order = torch.argsort(x.detach())
    logits = -(torch.arange(4, dtype=torch.float64) - 1.5).abs() / max(0.1, 0.5 * x.std().item())
    want = torch.empty(4, dtype=torch.float64)
    want[order] = torch.softmax(logits, 0)
    torch.testing.assert_close(x.grad, want)


def test_single_loss_and_float32():
    assert soft_median(torch.tensor([2.5])).item() == 2.5
    x = torch.tensor([3.0, 1.0, 2.0])
    assert soft_median(x).dtype == torch.float32


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((torch.zeros(0),), ValueError, "empty"),
        ((torch.zeros(2, 2),), ValueError, "1-D"),
        ((torch.tensor([1, 2]),), TypeError, "floating"),
        ((torch.tensor([1.0, 2.0]), 0.0), ValueError, "temperature"),
        ((torch.tensor([1.0, 2.0]), -1.0), ValueError, "temperature"),
        (([1.0, 2.0],), ValueError, "1-D"),
    ],
)
def test_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        soft_median(*args)
