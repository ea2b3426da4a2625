"""AdamHD's update rules (update=, cautious, trust_ratio, adanorm, diffgrad) against an independent
float64 reference written here, on the single-tensor and foreach paths, composed with Huber and
cautious decay; state round trips; edge tensors; bad options; adam-atan2-pytorch when installed."""

import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adamhd import AdamHD

PATHS = {"single": dict(foreach=False, fused=False), "foreach": dict(foreach=True, fused=False)}


class Reference:
    """One tensor, float64, the rules as published (see docs/update-rules.md)."""

    def __init__(self, p0, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1,
                 delta="adaptive", decay_form="explicit", cautious_decay=False, amsgrad=False,
                 update="adam", atan2_a=1.27, atan2_b=1.0, softplus_beta=50.0, cautious=False,
                 trust_ratio=False, adanorm=False, diffgrad=False):
        self.p = p0.detach().double().clone()
        self.m, self.v, self.vmax = (torch.zeros_like(self.p) for _ in range(3))
        self.prev = torch.zeros_like(self.p)
        self.e = 0.0
        self.mu = None
        self.t = 0
        self.__dict__.update(lr=lr, b1=betas[0], b2=betas[1], eps=eps, wd=weight_decay,
                             delta=delta, form=decay_form, cdecay=cautious_decay, ams=amsgrad,
                             update=update, a=atan2_a, b=atan2_b, beta=softplus_beta,
                             cautious=cautious, trust=trust_ratio, adanorm=adanorm, diff=diffgrad)

    def direction(self, mh, vh):
        if self.update == "atan2":
            return self.a * torch.atan2(mh, self.b * vh.sqrt())
        if self.update == "softplus":
            return mh / (torch.log1p(torch.exp(self.beta * vh.sqrt())) / self.beta)
        return mh / (vh.sqrt() + self.eps)

    def threshold(self):
        if self.delta != "adaptive":
            return self.delta
        a = self.p.abs().mean().item() if self.p.numel() else 0.0
        self.mu = a if self.mu is None else 0.99 * self.mu + 0.01 * a
        return 1.5 * self.mu

    def step(self, g):
        g = g.double()
        self.t += 1
        d = self.threshold()
        s = g
        if self.adanorm:
            gn = g.norm().item()
            self.e = 0.95 * self.e + 0.05 * gn
            s = g * (self.e / gn) if (self.e > gn and gn > 0) else g
            self.grown = getattr(self, "grown", 0) + (s is not g)
        self.m = self.b1 * self.m + (1 - self.b1) * s
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        self.vmax = torch.maximum(self.vmax, self.v)
        mh = self.m / (1 - self.b1**self.t)
        vh = (self.vmax if self.ams else self.v) / (1 - self.b2**self.t)
        if self.diff:
            mh = mh * torch.sigmoid((self.prev - g).abs())
            self.prev = g.clone()
        u = self.direction(mh, vh)
        if self.cautious:
            mask = (u * g > 0).double()
            u = u * mask / max(mask.mean().item() if mask.numel() else 0.0, 1e-3)
        if self.trust:
            pn, un = self.p.norm().item(), u.norm().item()
            u = u * (pn / un if pn > 0 and un > 0 else 1.0)
        keep = (u * self.p >= 0).double() if self.cdecay else torch.ones_like(self.p)
        tau = self.lr * self.wd
        if self.form == "explicit":
            self.p = self.p - tau * keep * self.p.clamp(-d, d)
        self.p = self.p - self.lr * u
        if self.form == "proximal":
            q, k = self.p, 1 + tau
            self.p = q - keep * tau / k * q.clamp(-k * d, k * d)


RULES = [
    dict(update="atan2"),
    dict(update="atan2", atan2_a=0.7, atan2_b=3.0),
    dict(update="softplus"),
    dict(update="softplus", softplus_beta=2.0),
    dict(cautious=True),
    dict(trust_ratio=True),
    dict(adanorm=True),
    dict(diffgrad=True),
    dict(update="softplus", diffgrad=True, adanorm=True, amsgrad=True),
    dict(update="atan2", cautious=True, trust_ratio=True),
]
DECAYS = [
    dict(),
    dict(delta=0.3, decay_form="proximal"),
    dict(cautious_decay=True),
    dict(delta=math.inf, cautious_decay=True, decay_form="proximal"),
]


def name(case):
    return ",".join(f"{k}={v}" for k, v in case.items()) or "default"


def run(rule, decay, path, steps=8, dtype=torch.float64, shapes=((6, 5), (7,), ()), seed=0,
        shrink=1.0):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64).to(dtype))
          for s in shapes]
    refs = [Reference(p, **rule, **decay) for p in ps]
    opt = AdamHD(ps, lr=1e-2, weight_decay=0.1, **rule, **decay, **PATHS[path])
    for _ in range(steps):
        for p, ref in zip(ps, refs):
            grad = torch.randn(p.shape, generator=g, dtype=torch.float64) * shrink**ref.t
            if p.dim():
                grad[..., :1] = 0.0  # zero gradients reach the masks
            p.grad = grad.to(dtype)
            ref.step(p.grad)
        opt.step()
    return ps, refs, opt


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("decay", DECAYS, ids=name)
@pytest.mark.parametrize("rule", RULES, ids=name)
def test_rule_matches_float64_reference(rule, decay, path):
    ps, refs, opt = run(rule, decay, path)
    assert set(opt.paths.values()) == {path}
    for p, ref in zip(ps, refs):
        torch.testing.assert_close(p.detach(), ref.p, rtol=1e-10, atol=1e-12)
        state = opt.state[p]
        torch.testing.assert_close(state["exp_avg"], ref.m, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(state["exp_avg_sq"], ref.v, rtol=1e-12, atol=1e-14)
        if rule.get("adanorm"):
            assert state["adanorm_e"].dtype == torch.float64
            assert state["adanorm_e"].item() == pytest.approx(ref.e, rel=1e-12)
        if rule.get("diffgrad"):
            assert torch.equal(state["prev_grad"], ref.prev)
        assert ("adanorm_e" in state) == bool(rule.get("adanorm"))
        assert ("prev_grad" in state) == bool(rule.get("diffgrad"))


@pytest.mark.parametrize("path", PATHS)
def test_adanorm_rescales_shrinking_gradients(path):
    """Gradients shrinking 0.3x a step: the norm EMA exceeds ||g|| from the fourth step on, so
    the first moment takes g*e/||g|| (the branch random gradients rarely reach in a few steps)."""
    ps, refs, opt = run(dict(adanorm=True), {}, path, shrink=0.3, shapes=((6, 5), (7,)))
    assert all(ref.grown >= 4 for ref in refs), [ref.grown for ref in refs]
    for p, ref in zip(ps, refs):
        torch.testing.assert_close(p.detach(), ref.p, rtol=1e-10, atol=1e-12)
        assert opt.state[p]["adanorm_e"].item() == pytest.approx(ref.e, rel=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    a=st.floats(0.1, 3.0), b=st.floats(0.1, 5.0), beta=st.floats(0.5, 100.0),
    b1=st.floats(0.0, 0.99), b2=st.floats(0.5, 0.9999), seed=st.integers(0, 2**16),
    update=st.sampled_from(["atan2", "softplus"]), cautious=st.booleans(),
)
def test_rules_hypothesis(a, b, beta, b1, b2, seed, update, cautious):
    rule = dict(update=update, atan2_a=a, atan2_b=b, softplus_beta=beta, cautious=cautious,
                betas=(b1, b2))
    ps, refs, _ = run(rule, {}, "foreach", steps=4, shapes=((4, 3),), seed=seed)
    torch.testing.assert_close(ps[0].detach(), refs[0].p, rtol=1e-9, atol=1e-11)


def test_single_and_foreach_agree_bit_for_bit_in_float32():
    rule = dict(update="atan2", cautious=True, trust_ratio=True, adanorm=True, diffgrad=True)
    a, _, _ = run(rule, dict(cautious_decay=True), "single", dtype=torch.float32)
    b, _, _ = run(rule, dict(cautious_decay=True), "foreach", dtype=torch.float32)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("path", PATHS)
def test_state_dict_round_trip_is_bit_exact(path, dtype):
    kw = dict(lr=1e-2, weight_decay=0.1, update="softplus", cautious=True, trust_ratio=True,
              adanorm=True, diffgrad=True, eps=1e-3, **PATHS[path])

    def grads(seed):
        g = torch.Generator().manual_seed(seed)
        return [torch.randn(s, generator=g).to(dtype) for s in ((6, 5), (7,))]

    def train(ps, opt, seeds):
        for seed in seeds:
            for p, grad in zip(ps, grads(seed)):
                p.grad = grad
            opt.step()

    torch.manual_seed(0)
    straight = [torch.nn.Parameter(torch.randn(s).to(dtype)) for s in ((6, 5), (7,))]
    first = [torch.nn.Parameter(p.detach().clone()) for p in straight]
    opt = AdamHD(straight, **kw)
    train(straight, opt, range(6))
    opt1 = AdamHD(first, **kw)
    train(first, opt1, range(3))
    ckpt = roundtrip({"p": [p.detach() for p in first], "opt": opt1.state_dict()})
    resumed = [torch.nn.Parameter(p.clone()) for p in ckpt["p"]]
    opt2 = AdamHD(resumed, **kw)
    opt2.load_state_dict(ckpt["opt"])
    assert all(opt2.state[p]["adanorm_e"].dtype == torch.float32 for p in resumed)
    train(resumed, opt2, range(3, 6))
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)
        for key, value in opt.state[a].items():
            assert torch.equal(value, opt2.state[b][key]), key


@pytest.mark.parametrize("path", PATHS)
def test_params_without_grad_are_untouched(path):
    p, q = torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))
    before = q.detach().clone()
    opt = AdamHD([p, q], update="atan2", cautious=True, trust_ratio=True, adanorm=True,
                 diffgrad=True, **PATHS[path])
    for _ in range(3):
        p.grad = torch.randn_like(p)
        opt.step()
    assert torch.equal(q.detach(), before) and len(opt.state[q]) == 0


@pytest.mark.parametrize("path", PATHS)
def test_edge_tensors(path):
    """0-size, 0-dim and non-contiguous tensors against the reference; bf16 close to fp32."""
    rule = dict(update="softplus", cautious=True, trust_ratio=True, adanorm=True, diffgrad=True)
    g = torch.Generator().manual_seed(3)
    base = [torch.randn(0), torch.randn(()), torch.randn(9, 6).t(), torch.randn(8, 6)[:, ::2]]
    ps = [torch.nn.Parameter(x.double()) for x in base]
    ps[2] = torch.nn.Parameter(torch.randn(9, 6, dtype=torch.float64).t())
    assert not ps[2].is_contiguous()
    refs = [Reference(p, **rule) for p in ps]
    low = [torch.nn.Parameter(p.detach().to(torch.bfloat16)) for p in ps]
    opt = AdamHD(ps, lr=1e-2, weight_decay=0.1, **rule, **PATHS[path])
    opt_low = AdamHD(low, lr=1e-2, weight_decay=0.1, eps=1e-3, **rule, **PATHS[path])
    for _ in range(5):
        for p, q, ref in zip(ps, low, refs):
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
            q.grad = p.grad.to(torch.bfloat16)
            ref.step(p.grad)
        opt.step()
        opt_low.step()
    for p, q, ref in zip(ps, low, refs):
        torch.testing.assert_close(p.detach(), ref.p, rtol=1e-10, atol=1e-12)
        assert q.dtype == torch.bfloat16 and opt_low.state[q]["adanorm_e"].dtype == torch.float32
        torch.testing.assert_close(q.detach().double(), ref.p, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(update="lion"), "Invalid update"),
        (dict(update=None), "Invalid update"),
        (dict(atan2_a=0.0), "atan2_a"),
        (dict(atan2_b=-1.0), "atan2_b"),
        (dict(atan2_a=math.inf), "atan2_a"),
        (dict(softplus_beta=math.nan), "softplus_beta"),
        (dict(softplus_beta=True), "softplus_beta"),
        (dict(cautious=1), "cautious"),
        (dict(trust_ratio="yes"), "trust_ratio"),
        (dict(adanorm=None), "adanorm"),
        (dict(diffgrad=0), "diffgrad"),
        (dict(update="atan2", differentiable=True), "differentiable"),
    ],
)
def test_bad_options_raise_before_anything_changes(kwargs, pattern):
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match=pattern):
        AdamHD([p], **kwargs)
    opt = AdamHD([p])
    with pytest.raises(ValueError, match=pattern):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))], **kwargs})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize(
    "rule", [dict(update="atan2", cautious=True), dict(trust_ratio=True)], ids=name
)
def test_fused_true_raises_and_fused_none_avoids_the_kernels(rule, monkeypatch):
    """Options with a per-tensor statistic taken out of the kernel table (the CPU kernel runs
    them: tests/kernels/test_fused_update_options.py) make fused=True raise and fused=None take
    another path."""
    from adamhd.kernels import spec

    monkeypatch.setitem(spec.UPDATE_OPTIONS, "cpu", ())
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(RuntimeError, match="fused=True cannot be honoured.*update="):
        AdamHD([p], fused=True, **rule)
    opt = AdamHD([p], **rule)
    p.grad = torch.ones(3)
    opt.step()
    assert opt.paths[0] in ("single", "foreach")


def test_adam_default_is_unchanged_and_old_checkpoints_get_the_defaults():
    """update="adam" with no option takes the original paths (bit-identical to before)."""
    a = torch.nn.Parameter(torch.randn(5))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a = AdamHD([a], fused=False, foreach=False)
    opt_b = torch.optim.AdamW([b], foreach=False)
    opt_a.param_groups[0]["delta"] = math.inf
    for _ in range(3):
        a.grad = torch.randn(5)
        b.grad = a.grad.clone()
        opt_a.step()
        opt_b.step()
    assert torch.equal(a, b)
    state = opt_a.__getstate__()
    for key in ("update", "cautious", "trust_ratio", "adanorm", "diffgrad", "atan2_a"):
        del state["param_groups"][0][key]
    fresh = AdamHD.__new__(AdamHD)
    fresh.__setstate__(state)
    assert fresh.param_groups[0]["update"] == "adam"
    assert fresh.param_groups[0]["cautious"] is False


# ------------------------------------------------------------------------------------------------
# peer: adam-atan2-pytorch (pip install adam-atan2-pytorch; the "peers" extra)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cautious", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_atan2_matches_adam_atan2_pytorch(cautious, weight_decay):
    """AdamAtan2 decays p*(1 - lr*wd) before its step: AdamHD's decay="l2" (explicit). Its
    cautious_factor=0 is our cautious=True (floor 1e-5 vs our 1e-3 on the kept fraction: the
    same unless fewer than 0.1% of coordinates are kept). Its second moment is a lerp of g*g
    (ours mul+addcmul, torch's Adam): equal to rounding, not bit for bit."""
    adam_atan2 = pytest.importorskip("adam_atan2_pytorch")
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(7, 5, dtype=torch.float64)) for _ in range(2)]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ours = AdamHD(ps, lr=1e-2, betas=(0.9, 0.99), weight_decay=weight_decay, decay="l2",
                  update="atan2", cautious=cautious, foreach=False, fused=False)
    theirs = adam_atan2.AdamAtan2(qs, lr=1e-2, betas=(0.9, 0.99), weight_decay=weight_decay,
                                  cautious_factor=0.0 if cautious else 1.0)
    for _ in range(10):
        for p, q in zip(ps, qs):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        ours.step()
        theirs.step()
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13)


def test_bench_step_times_each_option_on_every_path():
    """``adamhd bench step --options``: one contender per path and option set."""
    import argparse

    from adamhd.bench import step as bench_step

    parser = argparse.ArgumentParser()
    bench_step.add_step_parser(parser.add_subparsers())
    args = parser.parse_args(["step", "--paths", "single,foreach", "--deltas", "adaptive",
                              "--forms", "explicit", "--no-external",
                              "--options", "update=atan2,cautious=True+softplus_beta=7"])
    rows = {c.name: c for c in bench_step.contenders(args) if "explicit " in c.name}
    assert set(rows) == {
        f"AdamHD {path} adaptive explicit {option}"
        for path in ("single", "foreach")
        for option in ("update=atan2", "cautious=True+softplus_beta=7")
    }
    opt = rows["AdamHD foreach adaptive explicit cautious=True+softplus_beta=7"].make(
        [torch.nn.Parameter(torch.randn(2))])
    group = opt.param_groups[0]
    assert group["cautious"] is True and group["softplus_beta"] == 7.0 and group["foreach"]
