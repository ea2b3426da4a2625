"""Each optimizer against its independent float64 reference (tests/optim/reference.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.optim import common, reference

STEPS = 6


def _opt_run(name, shape, dtype, n=STEPS, **override):
    cls, kwargs = common.CASES[name]
    kwargs = {**kwargs, **override}
    grads = common.grads_for(shape, n)
    p0 = torch.randn(shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    p = p0.to(dtype).clone().requires_grad_()
    opt = cls([p], **kwargs)
    common.run(opt, [p], [grads], common.losses(n))
    return p0, grads, p, opt, kwargs


def _ref(name, p0, grads, kwargs):
    kw = dict(kwargs)
    if name == "adalo":
        b1, b2 = kw.pop("betas")
        return reference.adalo(p0, grads, common.losses(len(grads)), beta1=b1, beta2=b2,
                               mode=kw.pop("mode", "adversarial"), **kw)
    return getattr(reference, name)(p0, grads, **kw)


def _shapes(name):
    return [(3, 2, 4), (4, 3), (7,), ()] if name == "sm3" else common.SHAPES


@pytest.mark.parametrize("name", list(common.CASES))
def test_float64_matches_reference(name):
    for shape in _shapes(name):
        p0, grads, p, opt, kwargs = _opt_run(name, shape, torch.float64)
        want, _ = _ref(name, p0, grads, kwargs)
        torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-13, msg=str(shape))


@pytest.mark.parametrize("name", list(common.CASES))
def test_float32_matches_reference(name):
    for shape in _shapes(name):
        p0, grads, p, opt, kwargs = _opt_run(name, shape, torch.float32)
        want, _ = _ref(name, p0, grads, kwargs)
        torch.testing.assert_close(p.detach().double(), want, rtol=1e-5, atol=1e-5)


def test_state_matches_reference():
    p0, grads, p, opt, kw = _opt_run("nsgda", (4, 5), torch.float64)
    torch.testing.assert_close(opt.state[p]["momentum_buffer"],
                               _ref("nsgda", p0, grads, kw)[1]["momentum_buffer"])
    assert float(opt.state[p]["step"]) == STEPS  # the sketch never advanced its counter
    p0, grads, p, opt, kw = _opt_run("adalo", (4, 5), torch.float64)
    want = _ref("adalo", p0, grads, kw)[1]
    torch.testing.assert_close(opt.state[p]["exp_avg"], want["exp_avg"])
    torch.testing.assert_close(opt.state[p]["loss_ema"], want["loss_ema"])
    for shape in [(4, 5), (2, 3, 4)]:
        p0, grads, p, opt, kw = _opt_run("adafactor", shape, torch.float64)
        want = _ref("adafactor", p0, grads, kw)[1]
        for key in ("exp_avg_sq_row", "exp_avg_sq_col"):
            torch.testing.assert_close(opt.state[p][key], want[key], rtol=1e-12, atol=1e-40)
    p0, grads, p, opt, kw = _opt_run("smmf", (6, 4), torch.float64)
    want = _ref("smmf", p0, grads, kw)[1]
    for key in ("row_m", "col_m", "row_v", "col_v"):
        torch.testing.assert_close(opt.state[p][key], want[key], rtol=1e-12, atol=1e-14)
    from adamhd.optim.smmf import unpack_signs
    assert torch.equal(unpack_signs(opt.state[p]["sign"], 24).reshape(6, 4), want["sign"])
    p0, grads, p, opt, kw = _opt_run("sm3", (3, 2, 4), torch.float64)
    want = _ref("sm3", p0, grads, kw)[1]
    for d in range(3):
        torch.testing.assert_close(opt.state[p][f"accumulator_{d}"], want["covers"][d])


def test_adalo_compliant_mode_and_options():
    for override in [dict(mode="compliant"), dict(weight_decay=0.0), dict(eps=0.5)]:
        p0, grads, p, opt, kw = _opt_run("adalo", (3, 4), torch.float64, **override)
        torch.testing.assert_close(p.detach(), _ref("adalo", p0, grads, kw)[0], rtol=1e-12,
                                   atol=1e-13, msg=str(override))


def test_adafactor_options_match_reference():
    for override in [dict(relative_step=False), dict(scale_parameter=False), dict(d=0.5),
                     dict(decay_rate=-0.5, eps2=0.3), dict(lr=0.5)]:
        for shape in [(5, 3), (4,)]:
            p0, grads, p, opt, kw = _opt_run("adafactor", shape, torch.float64, **override)
            torch.testing.assert_close(p.detach(), _ref("adafactor", p0, grads, kw)[0],
                                       rtol=1e-12, atol=1e-13, msg=str(override))


def test_smmf_and_sm3_options_match_reference():
    cases = [("smmf", dict(decay_rate=-0.8, growth_rate=1.0, beta=0.5)),
             ("sm3", dict(momentum=0.0))]
    for name, override in cases:
        for shape in [(3, 5), (12,)]:
            p0, grads, p, opt, kw = _opt_run(name, shape, torch.float64, **override)
            torch.testing.assert_close(p.detach(), _ref(name, p0, grads, kw)[0],
                                       rtol=1e-12, atol=1e-13, msg=f"{name} {override}")


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 5), cols=st.integers(1, 5), seed=st.integers(0, 2**16),
    momentum=st.floats(0.0, 0.99), lr=st.floats(1e-4, 1.0), scale=st.floats(1e-3, 1e3),
)
def test_nsgda_hypothesis(rows, cols, seed, momentum, lr, scale):
    grads = [g * scale for g in common.grads_for((rows, cols), 3, seed)]
    p0 = torch.randn(rows, cols, dtype=torch.float64)
    for foreach in (True, False):
        from adamhd import NSGDA
        p = p0.clone().requires_grad_()
        opt = NSGDA([p], lr=lr, momentum=momentum, foreach=foreach)
        common.run(opt, [p], [grads])
        want, _ = reference.nsgda(p0, grads, lr, momentum, 1e-8)
        torch.testing.assert_close(p.detach(), want, rtol=1e-10, atol=1e-12)
        # each step moves the tensor by lr at most (exactly lr but for eps)
        assert float((p.detach() - p0).norm()) <= 3 * lr * (1 + 1e-9)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16), loss=st.lists(st.floats(0.0, 1e4), min_size=3, max_size=3),
    mode=st.sampled_from(["adversarial", "compliant"]), kappa=st.floats(0.1, 10.0),
)
def test_adalo_hypothesis(seed, loss, mode, kappa):
    from adamhd import AdaLo
    grads = common.grads_for((3, 2), 3, seed)
    p0 = torch.randn(3, 2, dtype=torch.float64)
    p = p0.clone().requires_grad_()
    opt = AdaLo([p], lr=1.0, kappa=kappa, mode=mode)
    common.run(opt, [p], [grads], loss)
    want, _ = reference.adalo(p0, grads, loss, 1.0, 0.9, 0.999, kappa, 1e-8, 1e-2, mode)
    torch.testing.assert_close(p.detach(), want, rtol=1e-10, atol=1e-13)


def test_nsgda_foreach_equals_single_path_bit_for_bit():
    out = []
    for foreach in (True, False):
        from adamhd import NSGDA
        params = [torch.randn(s, generator=torch.Generator().manual_seed(1)).requires_grad_()
                  for s in [(4, 3), (5,), ()]]
        opt = NSGDA(params, lr=0.1, weight_decay=0.2, foreach=foreach)
        common.run(opt, params, [common.grads_for(p.shape, 4, i, torch.float32)
                                 for i, p in enumerate(params)])
        out.append([p.detach() for p in params])
    assert all(torch.equal(a, b) for a, b in zip(*out))


@settings(max_examples=20, deadline=None)
@given(
    shape=st.sampled_from([(3, 4), (2, 2, 3), (5,), (1, 6), (7, 1)]), seed=st.integers(0, 2**16),
    log_scale=st.floats(-12.0, 6.0), name=st.sampled_from(["adafactor", "smmf", "sm3"]),
)
def test_factored_optimizers_hypothesis(shape, seed, log_scale, name):
    """Gradients from 1e-12 to 1e6 in scale, thin and wide matrices."""
    cls, kwargs = common.CASES[name]
    grads = [g * 10.0**log_scale for g in common.grads_for(shape, 3, seed)]
    p0 = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    p = p0.clone().requires_grad_()
    common.run(cls([p], **kwargs), [p], [grads])
    torch.testing.assert_close(p.detach(), _ref(name, p0, grads, kwargs)[0], rtol=1e-10,
                               atol=1e-12)
