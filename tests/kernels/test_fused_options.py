"""The fused CPU kernel's elementwise options: cautious decay, L2 decay, and the atan2/softplus
update rules, against the single-tensor path and a float64 reference written here."""

import math

import pytest
import torch

from adamhd import AdamHD
from adamhd.decay import HuberDecay, L2Decay
from adamhd.hyper import AdamStep
from adamhd.kernels import fused_adamhd
from adamhd.update_rules import UpdateRule
from tests.kernels.conftest import clone_params, make_params
from tests.kernels.test_fused_cpu import assert_states_close, train

SHAPES = [(0,), (), (7,), (33, 17), (70001,)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", [
    dict(cautious_decay=True),
    dict(cautious_decay=True, decay_form="proximal", amsgrad=True),
    dict(cautious_decay=True, delta=0.3, maximize=True),
    dict(decay="l2"),
    dict(decay="l2", decay_form="proximal"),
    dict(decay="l2", cautious_decay=True),
    dict(decay="l2", cautious_decay=True, decay_form="proximal"),
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_decay_options_match_single_tensor_path(cpu_kernel, dtype, case):
    kw = {"lr": 1e-2, "weight_decay": 0.5, **case}
    ref_ps = make_params(dtype, shapes=SHAPES)
    ps = clone_params(ref_ps)
    ref = train(ref_ps, "single", steps=12, **kw)
    opt = train(ps, "fused", steps=12, **kw)
    assert set(opt.paths.values()) == {"fused"}
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    assert_states_close(opt, ps, ref, ref_ps, **tol)


def test_cautious_decay_takes_the_fused_path_by_default(cpu_kernel):
    p = torch.nn.Parameter(torch.randn(5))
    p.grad = torch.randn(5)
    opt = AdamHD([p], cautious_decay=True)
    opt.step()
    assert opt.paths[0] == "fused"


@pytest.mark.parametrize("options,path", [
    (dict(update="atan2"), "fused"),
    (dict(update="softplus", cautious_decay=True), "fused"),
    (dict(update="atan2", cautious=True), "fused"),
    (dict(trust_ratio=True, diffgrad=True), "fused"),
])
def test_elementwise_update_rules_take_the_fused_path_by_default(cpu_kernel, options, path):
    p = torch.nn.Parameter(torch.randn(5))
    p.grad = torch.randn(5)
    opt = AdamHD([p], **options)
    opt.step()
    assert opt.paths[0] in ((path,) if path == "fused" else ("foreach", "single"))


def step_record(update: str = "adam", **kw) -> AdamStep:
    """The step record with an update rule (``atan2_a``, ``atan2_b``, ``softplus_beta`` in kw)."""
    rule_keys = {k: kw.pop(k) for k in ("atan2_a", "atan2_b", "softplus_beta") if k in kw}
    return AdamStep(update=UpdateRule(update=update, **rule_keys), **kw)


def reference_step(p, g, m, v, t, mu, h):
    """One AdamHD step in float64 (docs/decay.md, docs/update-rules.md); returns (p, m, v, mu)."""
    p, g, m, v = (x.double() for x in (p, g, m, v))
    if h.maximize:
        g = -g
    tau = h.lr * h.weight_decay
    d = math.inf
    if h.decay.adaptive:
        a = p.abs().mean().item() if p.numel() else 0.0
        mu = mu + (1 - h.decay.delta_beta) * (a - mu)
        d = h.decay.delta_scale * mu
    elif h.decay.name == "huber":
        d = h.decay.delta
    m = h.beta1 * m + (1 - h.beta1) * g
    v = h.beta2 * v + (1 - h.beta2) * g * g
    m_hat, sqrt_v_hat = m / (1 - h.beta1**t), (v / (1 - h.beta2**t)).sqrt()
    r = h.update
    if r.update == "atan2":
        u = r.atan2_a * torch.atan2(m_hat, r.atan2_b * sqrt_v_hat)
    elif r.update == "softplus":
        u = m_hat / (torch.log1p(torch.exp(r.softplus_beta * sqrt_v_hat)) / r.softplus_beta)
    else:
        u = m_hat / (sqrt_v_hat + h.eps)
    mask = (u.sign() * p.sign() >= 0) if h.decay.cautious else torch.ones_like(p, dtype=bool)
    if h.decay.form == "explicit":
        p = p - tau * p.clamp(-d, d) * mask
        return p - h.lr * u, m, v, mu
    q = p - h.lr * u
    bound = (1 + tau) * d
    return q - tau / (1 + tau) * q.clamp(-bound, bound) * mask, m, v, mu


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("update,decay", [
    ("atan2", HuberDecay()),
    ("atan2", HuberDecay(delta=0.2, form="proximal", cautious=True)),
    ("softplus", HuberDecay(cautious=True)),
    ("softplus", L2Decay(form="proximal")),
    ("adam", HuberDecay(delta=0.2, cautious=True)),
])
def test_update_rules_match_float64_reference(cpu_kernel, dtype, update, decay):
    gen = torch.Generator().manual_seed(4)
    ps = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    h = step_record(decay=decay, lr=3e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.5,
                       maximize=update == "softplus", update=update, atan2_a=1.1, atan2_b=0.8,
                       softplus_beta=30.0)
    work = [p.to(dtype) for p in ps]
    ms, vs = [torch.zeros_like(p) for p in work], [torch.zeros_like(p) for p in work]
    steps = [torch.zeros((), dtype=dtype) for _ in work]
    mus = [p.abs().mean(dtype=dtype).nan_to_num() for p in work]
    ref = [(p.clone(), torch.zeros_like(p), torch.zeros_like(p), mu.item())
           for p, mu in zip(ps, mus)]
    for t in range(1, 5):
        gs = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in ps]
        fused_adamhd(work, [g.to(dtype) for g in gs], ms, vs, [], steps, mus, h)
        ref = [reference_step(p, g, m, v, t, mu, h) for (p, m, v, mu), g in zip(ref, gs)]
    # float64: the kernel's softplus is torch's (x itself where beta*x > 20: off by < exp(-20)/beta)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-8, atol=1e-11)
    for got, m, v, mu, (p_ref, m_ref, v_ref, mu_ref) in zip(work, ms, vs, mus, ref):
        torch.testing.assert_close(got.double(), p_ref, **tol)
        torch.testing.assert_close(m.double(), m_ref, **tol)
        torch.testing.assert_close(v.double(), v_ref, **tol)
        if decay.adaptive:
            assert mu.item() == pytest.approx(mu_ref, rel=1e-6)


def test_unknown_update_rule_is_refused_before_anything_changes(cpu_kernel):
    p = torch.randn(4)
    before = p.clone()
    h = step_record(decay=HuberDecay(), lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8,
                    weight_decay=0.1, update="lion")
    with pytest.raises(ValueError, match="update='lion'"):
        fused_adamhd([p], [torch.ones(4)], [torch.zeros(4)], [torch.zeros(4)], [],
                     [torch.zeros(())], [p.abs().mean()], h)
    assert torch.equal(p, before)
