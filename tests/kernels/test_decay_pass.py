"""The fused decay pass (``adamhd::decay_``, issue 20) agrees with the Python rules
(``adamhd.decay.rules``) on every option combination, and with a float64 reference written here;
bad input is refused before anything changes."""

import itertools
import math

import pytest
import torch

from adamhd.decay import HuberDecay, L2Decay
from adamhd.kernels import fused_decay_, fused_decay_reason, spec

SHAPES = [(0,), (), (7,), (33, 17), (70001,)]  # empty, scalar, short, 2-D, several chunks
RULES = {
    "l2": lambda form, c: L2Decay(form=form, cautious=c),
    "fixed": lambda form, c: HuberDecay(delta=0.4, form=form, cautious=c),
    "adaptive": lambda form, c: HuberDecay(delta="adaptive", delta_scale=0.7, delta_beta=0.9,
                                           form=form, cautious=c),
}
TOL = {torch.float32: (2e-6, 2e-6), torch.float64: (1e-13, 1e-13), torch.bfloat16: (2e-2, 2e-2)}


def tensors(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in SHAPES]
    steps = [torch.randn(s, generator=g, dtype=torch.float64).mul(0.3).to(dtype) for s in SHAPES]
    return ps, steps


def python_rule(rule, ps, steps, tau, mus):
    """The Python rules as the wrapper applies them: thresholds, explicit before the step,
    proximal after it, cautious with copies of p_t."""
    before = [p.clone() for p in ps]
    ds = rule.thresholds(ps, mus, foreach=False) if rule.adaptive else [rule.delta] * len(ps)
    if rule.before_update and not rule.cautious:
        rule.apply_(ps, tau, ds, foreach=False)
    for p, s in zip(ps, steps):
        p.sub_(s)
    if rule.cautious:
        masks = rule.masks([b - p for b, p in zip(before, ps)], before, foreach=False)
        for p, b, d, m in zip(ps, before, ds, masks):
            if rule.before_update:
                p.sub_(b)
                rule.on(tau, d, p.dtype)(b, m)
                p.add_(b)
            else:
                rule.on(tau, d, p.dtype)(p, m)
    elif not rule.before_update:
        rule.apply_(ps, tau, ds, foreach=False)


def fused_rule(rule, ps, steps, tau, mus):
    """The same step through the pass: it computes the adaptive thresholds itself."""
    before = [p.clone() for p in ps] if rule.cautious else None
    if rule.before_update and not rule.cautious:
        fused_decay_(ps, rule, tau, mus=mus)
        for p, s in zip(ps, steps):
            p.sub_(s)
        return
    ds = None
    if not rule.cautious and rule.adaptive:  # proximal: thresholds of p_t, before the step
        ds = rule.thresholds(ps, mus, foreach=False)
    for p, s in zip(ps, steps):
        p.sub_(s)
    fused_decay_(ps, rule, tau, p_ts=before, mus=mus, ds=ds)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_every_combination_agrees_with_the_python_rule(cpu_kernel, dtype):
    for name, form, cautious, tensor_tau in itertools.product(
            RULES, ("explicit", "proximal"), (False, True), (False, True)):
        rule = RULES[name](form, cautious)
        ps, steps = tensors(dtype)
        ref = [p.clone() for p in ps]
        mus = [torch.tensor(v, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
               for v in (0.5, 0.9, 0.7, 1.1, 0.6)]
        ref_mus = [m.clone() for m in mus]
        for k in range(1 if dtype == torch.bfloat16 else 3):  # bf16: rounding drift flips masks
            tau = 0.05 * (k + 1)
            tau = torch.tensor(tau, dtype=torch.float64) if tensor_tau else tau
            fused_rule(rule, ps, steps, tau, mus)
            python_rule(rule, ref, steps, tau, ref_mus)
        rtol, atol = TOL[dtype]
        case = (name, form, cautious, tensor_tau)
        for p, q in zip(ps, ref):
            assert torch.allclose(p, q, rtol=rtol, atol=atol), (case, (p - q).abs().max())
        for m, r in zip(mus, ref_mus):
            assert torch.allclose(m, r, rtol=1e-6, atol=0), (case, m, r)


def test_l2_explicit_is_adamw_decay_bit_for_bit(cpu_kernel):
    ps, _ = tensors(torch.float32)
    ref = [p.clone() for p in ps]
    fused_decay_(ps, L2Decay(), 0.013)
    for p, q in zip(ps, ref):
        assert torch.equal(p, q.mul_(1 - 0.013))


def test_against_a_float64_reference(cpu_kernel):
    """Huber, adaptive, cautious, both forms: the formulas of docs/decay.md in float64."""
    for form in ("explicit", "proximal"):
        rule = HuberDecay(delta="adaptive", delta_scale=1.5, delta_beta=0.99, form=form,
                          cautious=True)
        ps, steps = tensors(torch.float64, seed=3)
        p_t = [p.clone() for p in ps]
        mus = [torch.full((), math.nan, dtype=torch.float64) for _ in ps]  # first step: mu = a_1
        for p, s in zip(ps, steps):
            p.sub_(s)
        fused_decay_(ps, rule, 0.2, p_ts=[t.clone() for t in p_t], mus=mus)
        for p, t, s, mu in zip(ps, p_t, steps, mus):
            a = t.abs().mean().item() if t.numel() else 0.0
            assert mu.item() == pytest.approx(a, rel=1e-12)
            d = 1.5 * a
            keep = (torch.sign(s) * t) >= 0  # u = p_t - p_new = s
            if form == "explicit":
                want = t - 0.2 * t.clamp(-d, d) - s
            else:
                q = t - s
                want = torch.where(q.abs() <= 1.2 * d, q / 1.2, q - 0.2 * d * torch.sign(q))
            want = torch.where(keep, want, t - s)
            torch.testing.assert_close(p, want, rtol=1e-12, atol=1e-12)


def test_bad_input_is_refused_before_anything_changes(cpu_kernel):
    ps, _ = tensors(torch.float32)
    ref = [p.clone() for p in ps]
    rule = HuberDecay(delta="adaptive", cautious=True)
    with pytest.raises(RuntimeError, match="copy of p_t"):
        fused_decay_(ps, rule, 0.1, p_ts=[p.clone().double() for p in ps],
                     mus=[torch.zeros(()) for _ in ps])
    with pytest.raises(RuntimeError, match="delta_mu"):
        fused_decay_(ps, HuberDecay(delta="adaptive"), 0.1, mus=[torch.zeros(())])
    assert all(torch.equal(p, q) for p, q in zip(ps, ref))
    assert fused_decay_reason(L2Decay(), [torch.zeros(3, dtype=torch.bfloat16)]) is not None
    assert fused_decay_reason(L2Decay(), [torch.zeros(4, 4).t()]) is not None
    assert fused_decay_reason(HuberDecay(), [torch.zeros(4, dtype=torch.bfloat16)]) is None


def test_decay_schema_is_the_registered_ops(cpu_kernel):
    assert str(torch.ops.adamhd.decay_.default._schema) == "adamhd::" + spec.DECAY_SCHEMA


OPTIONS = [dict(decay=d, delta=delta, decay_form=f, cautious_decay=c)
           for d, delta in (("l2", "adaptive"), ("huber", 0.3), ("huber", "adaptive"))
           for f in ("explicit", "proximal") for c in (False, True)]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(map(str, o.values())))
def test_wrapper_takes_the_pass_and_agrees_with_torch_ops(cpu_kernel, monkeypatch, options):
    """with_decoupled_decay(Adam) through the fused pass equals the same optimizer on torch's
    ops (the pass switched off), weights and delta_mu, over steps and a state_dict round trip."""
    from adamhd.decay import wrapper
    from adamhd.decay.wrapper import with_decoupled_decay

    calls = []
    real = wrapper.fused_decay_
    monkeypatch.setattr(wrapper, "fused_decay_", lambda *a, **k: calls.append(1) or real(*a, **k))

    def run(fused):
        if not fused:
            monkeypatch.setattr(wrapper, "fused_decay_reason", lambda *a: "off")
        gen = torch.Generator().manual_seed(1)
        ps = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES[1:]]
        opt = with_decoupled_decay(torch.optim.Adam)(ps, lr=0.05, weight_decay=0.5, **options)
        for k in range(4):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
            if k == 1:
                opt.load_state_dict(opt.state_dict())
        return ps, opt

    ps, opt = run(True)
    assert calls
    ref_ps, ref = run(False)
    for p, q in zip(ps, ref_ps):
        torch.testing.assert_close(p, q, rtol=2e-6, atol=2e-6)
        if "delta_mu" in ref.state[q]:
            torch.testing.assert_close(opt.state[p]["delta_mu"], ref.state[q]["delta_mu"],
                                       rtol=1e-6, atol=0)
            assert opt.state[p]["delta_mu"].dtype == torch.float32
