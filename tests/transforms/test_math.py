"""Each transform against its float64 reference: fixed inputs, hypothesis, edge shapes, dtypes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adamhd import transforms
from tests.transforms.reference import REFERENCES

FUNCTIONS = {
    "centralize": transforms.centralize,
    "agc": transforms.agc,
    "normalize": transforms.normalize,
    "soft_clip": transforms.soft_clip,
    "layer_norm_adaptation": transforms.layer_norm_adaptation,
}
NAMES = list(FUNCTIONS)
SHAPES = [(), (0,), (1,), (7,), (3, 4), (5, 1), (1, 6), (2, 3, 4), (4, 0), (0, 3), (2, 2, 1, 3)]
TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-300),
    torch.float32: dict(rtol=2e-6, atol=1e-30),
    torch.bfloat16: dict(rtol=2**-7, atol=1e-30),
    torch.float16: dict(rtol=2**-10, atol=1e-7),
}


def make_param(shape, dtype, seed: int, grad_scale: float = 1.0) -> torch.Tensor:
    """Weights and gradients whose rows differ in size, so that AGC and the soft clip clip some
    rows and leave others, and centralisation has a non-zero mean to remove."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(shape, generator=g, dtype=torch.float64)
    grad = torch.randn(shape, generator=g, dtype=torch.float64) + 0.3
    if len(shape) > 1:
        row_scale = torch.logspace(-4, 1, shape[0], dtype=torch.float64)
        grad *= row_scale.view(-1, *[1] * (len(shape) - 1))
    param = p.to(dtype).requires_grad_()
    param.grad = (grad * grad_scale).to(dtype)
    return param


def check(name: str, param: torch.Tensor, **options) -> None:
    before_p, before_g = param.detach().clone(), param.grad.clone()
    want = REFERENCES[name](before_g, before_p, **options)
    FUNCTIONS[name]([param], **options)
    assert param.grad.dtype == before_g.dtype and param.grad.shape == before_g.shape
    assert torch.equal(param.detach(), before_p), "the weights must not change"
    torch.testing.assert_close(param.grad.double(), want, **TOL[param.dtype])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_matches_reference(name, shape, dtype):
    check(name, make_param(shape, dtype, seed=len(shape) + shape.count(0)))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [1e-8, 1e-3, 1e3])
def test_matches_reference_across_scales(name, scale):
    """Tiny and huge gradients: both branches of the clips, and the eps floors."""
    check(name, make_param((6, 5), torch.float64, seed=3, grad_scale=scale))


def test_agc_clips_some_rows_and_keeps_others():
    """The fixed inputs exercise both branches (else the comparison above proves less)."""
    p = make_param((3, 4), torch.float64, seed=2)
    ratio = p.grad.norm(dim=1) / (0.01 * p.detach().norm(dim=1).clamp_min(1e-3))
    assert (ratio > 1).any() and (ratio < 1).any()


def test_agc_and_normalize_options():
    check("agc", make_param((5, 3), torch.float32, seed=4), clip=0.3, eps=0.5)
    check("normalize", make_param((5, 3), torch.float32, seed=4), eps=0.25)
    check("soft_clip", make_param((5, 3), torch.float32, seed=4), eps=10.0)


@pytest.mark.parametrize("name", NAMES)
def test_non_contiguous_gradient(name):
    base = make_param((4, 6), torch.float32, seed=5)
    param = base.detach().t().contiguous().requires_grad_()
    param.grad = base.grad.t()  # a transposed view
    assert not param.grad.is_contiguous()
    check(name, param)


@pytest.mark.parametrize("name", NAMES)
def test_float16_gradient(name):
    check(name, make_param((3, 5), torch.float16, seed=6))


@pytest.mark.parametrize("name", NAMES)
def test_parameters_without_gradients_are_untouched(name):
    with_grad = make_param((3, 4), torch.float32, seed=7)
    without = torch.randn(3, 4, requires_grad=True)
    before = without.detach().clone()
    FUNCTIONS[name]([without, with_grad])
    assert without.grad is None and torch.equal(without.detach(), before)
    FUNCTIONS[name](without)  # a single tensor without a gradient: nothing to do


@pytest.mark.parametrize("name", NAMES)
def test_zero_gradients_stay_finite(name):
    """DCP initialises optimizer state with a zero-gradient step: no NaN may appear."""
    param = torch.randn(3, 4, requires_grad=True)
    param.grad = torch.zeros(3, 4)
    FUNCTIONS[name]([param])
    assert torch.equal(param.grad, torch.zeros(3, 4))


def test_many_tensors_in_one_call_match_one_at_a_time():
    params = [make_param(s, torch.float32, seed=i) for i, s in enumerate(SHAPES)]
    for name, fn in FUNCTIONS.items():
        together = [p.detach().clone().requires_grad_() for p in params]
        for t, p in zip(together, params):
            t.grad = p.grad.clone()
        fn(together)
        for t, p in zip(together, params):
            alone = p.detach().clone().requires_grad_()
            alone.grad = p.grad.clone()
            fn(alone)
            assert torch.equal(t.grad, alone.grad), name


def test_bad_hyperparameters_raise_before_any_change():
    param = make_param((3, 4), torch.float32, seed=8)
    before = param.grad.clone()
    for call in (
        lambda: transforms.agc([param], clip=0.0),
        lambda: transforms.agc([param], clip=-1.0),
        lambda: transforms.agc([param], eps=float("nan")),
        lambda: transforms.normalize([param], eps=-1e-8),
        lambda: transforms.soft_clip([param], eps=float("inf")),
    ):
        with pytest.raises(ValueError, match="must be a finite number > 0"):
            call()
    assert torch.equal(param.grad, before)


def test_sparse_and_misshaped_gradients_are_refused_before_any_change():
    good = make_param((3, 4), torch.float32, seed=9)
    before = good.grad.clone()
    sparse = torch.zeros(3, 4, requires_grad=True)
    sparse.grad = torch.eye(3, 4).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        transforms.agc([good, sparse])
    assert torch.equal(good.grad, before)


floats = st.floats(-1e4, 1e4, allow_nan=False, width=64)


@st.composite
def tensors(draw):
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    n = 1
    for s in shape:
        n *= s
    p = torch.tensor(draw(st.lists(floats, min_size=n, max_size=n)), dtype=torch.float64)
    g = torch.tensor(draw(st.lists(floats, min_size=n, max_size=n)), dtype=torch.float64)
    return p.reshape(shape), g.reshape(shape)


@settings(max_examples=60, deadline=None)
@given(pg=tensors(), name=st.sampled_from(NAMES))
def test_hypothesis_matches_reference(pg, name):
    p, g = pg
    param = p.clone().requires_grad_()
    param.grad = g.clone()
    want = REFERENCES[name](g, p)
    FUNCTIONS[name]([param])
    torch.testing.assert_close(param.grad, want, rtol=1e-10, atol=1e-12)


def test_whole_tensor_norms_are_accurate_on_large_float32():
    """torch's CPU norm of a whole float32 tensor drifts ~1e-3 over millions of elements; the
    statistics must not (normalisation and layer adaptation scale by them)."""
    g = torch.Generator().manual_seed(11)
    p = torch.randn(1024, 2048, generator=g).requires_grad_()
    p.grad = torch.rand(1024, 2048, generator=g)  # all positive: the worst case for drift
    want = p.grad.double() / p.grad.double().norm()
    transforms.normalize([p], eps=1e-30)
    torch.testing.assert_close(p.grad.double(), want, rtol=1e-6, atol=0)
