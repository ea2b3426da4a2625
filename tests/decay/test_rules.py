"""Each decay rule against an independent float64 reference written here, per tensor and foreach."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adamhd.decay import HuberDecay, L2Decay, cautious_mask, foreach_cautious_mask

F64 = torch.float64


# --- the references: plain float64 formulas, elementwise, no package code --------------------


def ref_pull(x: float, d: float) -> float:
    return max(-d, min(d, x))


def ref_rule(p: float, u: float, *, tau: float, lr: float, d: float, form: str,
             cautious: bool) -> float:
    """One decoupled step p -> p_new for update u: explicit decay on p, or proximal on
    q = p - lr*u; cautious: only where u*p >= 0 (signs of the weight before the step)."""
    same_sign = (u >= 0 and p >= 0) or (u <= 0 and p <= 0)  # u*p >= 0, exactly
    decays = same_sign or not cautious
    if form == "explicit":
        return p - (tau * ref_pull(p, d) if decays else 0.0) - lr * u
    q = p - lr * u
    if not decays:
        return q
    if math.isinf(d) or abs(q) <= (1 + tau) * d:
        return q / (1 + tau)
    return q - tau * d * math.copysign(1.0, q)


def rule_step(rule, ps, us, tau, lr, ds, foreach):
    """The package's rule wrapped around the update p - lr*u, as an optimizer uses it."""
    masks = rule.masks([u.clone() for u in us], ps, foreach)
    if rule.before_update:
        rule.apply_(ps, tau, ds, foreach, masks)
    for p, u in zip(ps, us):
        p.add_(u, alpha=-lr)
    if not rule.before_update:
        rule.apply_(ps, tau, ds, foreach, masks)


RULES = [
    (cls, form, cautious)
    for cls in (L2Decay, HuberDecay)
    for form in ("explicit", "proximal")
    for cautious in (False, True)
]


def make(cls, form, cautious, d):
    if cls is L2Decay:
        return L2Decay(form=form, cautious=cautious), math.inf
    return HuberDecay(delta=d, form=form, cautious=cautious), d


@pytest.mark.parametrize("cls, form, cautious", RULES)
@pytest.mark.parametrize("foreach", [False, True])
def test_rule_matches_reference_on_fixed_inputs(cls, form, cautious, foreach):
    p = torch.tensor([0.1, -0.2, 3.0, -4.0, 0.0, 0.5, -0.7, 2.0], dtype=F64)
    u = torch.tensor([0.3, 0.3, -1.0, -2.0, 1.0, 0.0, 0.0, 1.0], dtype=F64)
    tau, lr = 0.1, 0.05
    rule, d = make(cls, form, cautious, 1.0)
    got = [p.clone(), p[:3].clone()]
    rule_step(rule, got, [u, u[:3]], tau, lr, [d, d], foreach)
    for x, n in zip(got, (8, 3)):
        want = [ref_rule(a, b, tau=tau, lr=lr, d=d, form=form, cautious=cautious)
                for a, b in zip(p[:n].tolist(), u[:n].tolist())]
        torch.testing.assert_close(x, torch.tensor(want, dtype=F64), rtol=1e-14, atol=1e-15)


finite = st.floats(min_value=-20, max_value=20, allow_nan=False, allow_infinity=False)


@settings(max_examples=120, deadline=None)
@given(
    pu=st.lists(st.tuples(finite, finite), min_size=1, max_size=6),
    tau=st.floats(min_value=0.0, max_value=2.0),
    lr=st.floats(min_value=0.0, max_value=1.0),
    d=st.floats(min_value=1e-3, max_value=10.0),
    rule_index=st.integers(0, len(RULES) - 1),
    foreach=st.booleans(),
)
def test_rule_matches_reference_hypothesis(pu, tau, lr, d, rule_index, foreach):
    cls, form, cautious = RULES[rule_index]
    rule, d = make(cls, form, cautious, d)
    p = torch.tensor([a for a, _ in pu], dtype=F64)
    u = torch.tensor([b for _, b in pu], dtype=F64)
    got = [p.clone()]
    rule_step(rule, got, [u], tau, lr, [d], foreach)
    want = [ref_rule(a, b, tau=tau, lr=lr, d=d, form=form, cautious=cautious)
            for a, b in zip(p.tolist(), u.tolist())]
    torch.testing.assert_close(got[0], torch.tensor(want, dtype=F64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw, match", [
    (dict(delta=-1.0), r"Invalid delta: delta=-1.0"),
    (dict(delta=math.nan), r"Invalid delta: delta=nan"),
    (dict(delta="fixed"), r"Invalid delta: 'fixed'"),
    (dict(delta_scale=0.0), r"Invalid delta_scale: delta_scale=0.0"),
    (dict(delta_beta=1.0), r"Invalid delta_beta: delta_beta=1.0"),
    (dict(form="implicit"), r"Invalid form: 'implicit'"),
    (dict(cautious=1), r"Invalid cautious: 1"),
])
def test_a_rule_record_refuses_what_a_param_group_refuses(kw, match):
    with pytest.raises(ValueError, match=match):
        HuberDecay(**kw)
    if "form" in kw or "cautious" in kw:
        with pytest.raises(ValueError, match=match):
            L2Decay(**kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("foreach", [False, True])
def test_explicit_l2_is_adamw_bit_for_bit(dtype, foreach):
    p = torch.randn(257, generator=torch.Generator().manual_seed(0)).to(dtype)
    tau = 3e-4 * 0.1
    want = p.clone().mul_(1 - tau)  # torch.optim.AdamW's decay
    for rule in (L2Decay(), HuberDecay(delta=math.inf)):
        got = [p.clone()]
        rule.apply_(got, tau, [math.inf], foreach)
        assert torch.equal(got[0], want)


def test_l2_is_huber_with_infinite_threshold_in_both_forms():
    p = torch.randn(64, dtype=F64, generator=torch.Generator().manual_seed(1)) * 5
    u = torch.randn(64, dtype=F64, generator=torch.Generator().manual_seed(2))
    for form in ("explicit", "proximal"):
        for cautious in (False, True):
            a, b = [p.clone()], [p.clone()]
            rule_step(L2Decay(form=form, cautious=cautious), a, [u], 0.3, 0.1, [math.inf], False)
            rule_step(HuberDecay(delta=math.inf, form=form, cautious=cautious), b, [u], 0.3, 0.1,
                      [math.inf], False)
            assert torch.equal(a[0], b[0])


def test_cautious_mask_is_u_times_p_at_least_zero():
    u = torch.tensor([1.0, -1.0, 1.0, -1.0, 0.0, 0.0, 2.0, -0.0])
    p = torch.tensor([2.0, -2.0, -2.0, 2.0, 3.0, -3.0, 0.0, 1.0])
    want = torch.tensor([True, True, False, False, True, True, True, True])
    assert torch.equal(cautious_mask(u, p), want)
    assert torch.equal(foreach_cautious_mask([u], [p])[0], want.float())


def test_cautious_mask_uses_signs_not_an_underflowing_product():
    """1e-30 * -1e-30 underflows to -0.0 in float32, which ``>= 0`` would accept."""
    u = torch.tensor([1e-30, -1e-30])
    p = torch.tensor([-1e-30, 1e-30])
    assert not cautious_mask(u, p).any()
    assert not foreach_cautious_mask([u], [p])[0].any()


def test_zero_update_still_decays_with_cautious_decay():
    """The >= choice: a coordinate the optimizer does not move decays as without the mask."""
    p = torch.tensor([1.0, -2.0], dtype=F64)
    for foreach in (False, True):
        for form in ("explicit", "proximal"):
            cautious, plain = [p.clone()], [p.clone()]
            zero = [torch.zeros(2, dtype=F64)]
            rule_step(HuberDecay(delta=1.5, form=form, cautious=True), cautious, zero, 0.2, 0.1,
                      [1.5], foreach)
            rule_step(HuberDecay(delta=1.5, form=form), plain, zero, 0.2, 0.1, [1.5], foreach)
            assert torch.equal(cautious[0], plain[0]) and not torch.equal(cautious[0], p)


@pytest.mark.parametrize("form", ["explicit", "proximal"])
def test_tensor_tau_matches_float_tau(form):
    """capturable passes lr (and so tau) as a tensor: the per-tensor route takes it."""
    p = torch.randn(33, dtype=F64, generator=torch.Generator().manual_seed(3)) * 2
    u = torch.randn(33, dtype=F64, generator=torch.Generator().manual_seed(4))
    rule = HuberDecay(delta=0.7, form=form, cautious=True)
    a, b = [p.clone()], [p.clone()]
    for xs, tau in ((a, 0.25), (b, torch.tensor(0.25, dtype=F64))):
        masks = rule.masks([u], xs, foreach=False)
        rule.apply_(xs, tau, [0.7], foreach=True, masks=masks)
    torch.testing.assert_close(a[0], b[0], rtol=1e-15, atol=1e-15)
