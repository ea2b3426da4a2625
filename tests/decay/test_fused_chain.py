"""The fused chain (``adamhd.decay.fused_chain``): ``with_decoupled_decay(Adam/AdamW)`` with
``fused=True`` stepped by ONE call of AdamHD's fused kernel per group.

It must agree with the wrapper's unfused path (torch's fused Adam step + the decay, the chain
switched off) on every option combination, weights and state, to rounding; with a float64
reference written here; checkpoints move between the chain, the unfused wrapper and torch's
Adam both ways; a GradScaler-skipped step changes nothing; everything else falls back."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

from adamhd import with_decoupled_decay
from adamhd.decay import fused_chain, wrapper
from adamhd.kernels import cpu
from tests.decay.reference64 import Threshold64, cautious_mask64, explicit64, proximal64

F64 = torch.float64
SHAPES = [(), (7,), (33, 17), (33000,)]  # a scalar, short, 2-D, two kernel chunks
RULES = {
    "l2": dict(decay="l2"),
    "fixed": dict(delta=0.3),
    "adaptive": dict(delta="adaptive", delta_scale=1.2, delta_beta=0.9),
}
# weights: fp32 a few ulps after 4 steps; bf16 one ulp per step (the chain rounds once where the
# unfused path rounds the decayed p first, and its foreach L2 rounds 1 - tau to bf16). v: the
# kernel computes it without torch's FMA (ulps). mu: mean|p| summed in double or by torch.
WEIGHT_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6)}
V_TOL = {torch.float32: dict(rtol=1e-6, atol=0.0), torch.bfloat16: dict(rtol=8e-3, atol=0.0)}
MU_TOL = dict(rtol=1e-6, atol=0.0)


@pytest.fixture(autouse=True)
def kernel():
    if cpu.load() is None:
        pytest.skip(f"fused CPU kernel unavailable: {cpu.build_error()}")


@pytest.fixture
def chained(monkeypatch):
    """Counts the steps the wrapper ran through the chain."""
    calls = []
    real = wrapper.chain_step
    monkeypatch.setattr(wrapper, "chain_step", lambda *a: calls.append(1) or real(*a))
    return calls


def make(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=F64).to(dtype)) for s in SHAPES]


def grads_of(ps, step):
    """Gradients whose sign per element stays the same over the steps: |u| stays near 1, so no
    update rounds away in float32 (where it does, the two cautious masks differ by design:
    ``test_cautious_mask_where_the_update_rounds_away``)."""
    signs = torch.Generator().manual_seed(99)
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=signs, dtype=F64).sign()
            .mul(torch.rand(p.shape, generator=g, dtype=F64).add(0.5)).to(p.dtype) for p in ps]


def train(opt, ps, steps, start=0):
    for step in range(start, start + steps):
        for p, grad in zip(ps, grads_of(ps, step)):
            p.grad = grad
        opt.step()


def build(base, ps, chain, **options):
    opt = with_decoupled_decay(base)(ps, lr=1e-2, weight_decay=0.5, fused=True, **options)
    opt._fused_chain = chain
    return opt


def ulps_apart(a, b, p_t):
    """|a - b| in bfloat16 ulps of the largest of |a|, |b|, |p_t| (a decayed p_t rounded before
    an update that crosses or nears zero carries p_t's rounding error)."""
    scale = torch.maximum(torch.maximum(a.abs(), b.abs()), p_t.abs()).float()
    _, exponent = torch.frexp(scale)  # scale = mantissa * 2**exponent, mantissa in [0.5, 1)
    ulp = torch.ldexp(torch.ones_like(scale), exponent - 8)  # 8 significant bits
    return ((a.float() - b.float()).abs() / ulp).max().item()


def assert_same_state(opt, ps, ref, ref_ps, dtype, before=None):
    """Same keys, dtypes and devices as the unfused wrapper's; values to rounding (bfloat16
    weights: within 2 ulps of the weights ``before`` the step, compared step by step)."""
    for i, (p, q) in enumerate(zip(ps, ref_ps)):
        if dtype == torch.bfloat16:
            assert ulps_apart(p.detach(), q.detach(), before[i]) <= 2
        else:
            torch.testing.assert_close(p.detach(), q.detach(), **WEIGHT_TOL[dtype])
        mine, theirs = opt.state[p], ref.state[q]
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            assert (mine[key].dtype, mine[key].device) == (value.dtype, value.device), key
        assert torch.equal(mine["step"], theirs["step"])
        torch.testing.assert_close(mine["exp_avg"], theirs["exp_avg"], rtol=0, atol=0)
        for key in ("exp_avg_sq", "max_exp_avg_sq"):
            if key in theirs:
                torch.testing.assert_close(mine[key], theirs[key], **V_TOL[dtype])
        if "delta_mu" in theirs:
            torch.testing.assert_close(mine["delta_mu"], theirs["delta_mu"], **MU_TOL)


def sync(ref, ref_ps, opt, ps):
    """The unfused run continues from the chain's weights and state (bf16: one step's rounding
    is compared, not four steps of it compounding where the update is below one ulp)."""
    with torch.no_grad():
        for p, q in zip(ps, ref_ps):
            q.copy_(p)
            for key, value in ref.state[q].items():
                value.copy_(opt.state[p][key])


COMBOS = list(itertools.product(("adam", "adamw"), RULES, ("explicit", "proximal"),
                                (False, True), (torch.float32, torch.bfloat16)))


@pytest.mark.parametrize("base, rule, form, cautious, dtype", COMBOS,
                         ids=["-".join(map(str, c)).replace("torch.", "") for c in COMBOS])
def test_chain_equals_the_unfused_wrapper(chained, base, rule, form, cautious, dtype):
    base = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[base]
    options = dict(**RULES[rule], decay_form=form, cautious_decay=cautious)
    ps, ref_ps = make(dtype), make(dtype)
    opt, ref = build(base, ps, True, **options), build(base, ref_ps, False, **options)
    plain_l2 = rule == "l2" and form == "explicit" and not cautious  # AdamW's bits: not chained
    for step in range(4):
        before = [p.detach().clone() for p in ps]
        train(opt, ps, 1, start=step)
        train(ref, ref_ps, 1, start=step)
        assert_same_state(opt, ps, ref, ref_ps, dtype, before)
        if dtype == torch.bfloat16:
            sync(ref, ref_ps, opt, ps)
    assert len(chained) == (0 if plain_l2 else 4)
    reason = fused_chain.chain_reason(opt)  # the gradients of the last step are still there
    assert ("torch's AdamW" in reason) if plain_l2 else reason is None
    assert not torch.allclose(ps[2], make(dtype)[2], atol=1e-3)  # the weights moved


EXTRAS = {
    "amsgrad-maximize": dict(amsgrad=True, maximize=True),
    "lr-tensor": dict(lr=torch.tensor(1e-2)),
    "schedule": dict(decay_scaling="schedule", cautious_decay=True),
    "betas-eps": dict(betas=(0.5, 0.9), eps=1e-6, decay_form="proximal"),
}


@pytest.mark.parametrize("extra", list(EXTRAS))
def test_chain_with_more_options_and_groups(chained, extra):
    """amsgrad, maximize, a Tensor lr, the schedule scaling, other betas; two groups, one with
    weight_decay=0 (plain Adam in the kernel, no delta_mu), one frozen parameter."""
    def groups(ps):
        return [{"params": ps[:2]}, {"params": ps[2:3], "weight_decay": 0.0},
                {"params": ps[3:]}]

    ps, ref_ps = make(), make()
    frozen = [ps[3], ref_ps[3]]
    kw = {"lr": 1e-2, "weight_decay": 0.5, "fused": True, **EXTRAS[extra]}
    W = with_decoupled_decay(torch.optim.Adam)
    opt, ref = W(groups(ps), **kw), W(groups(ref_ps), **copy.deepcopy(kw))
    ref._fused_chain = False
    for step in range(3):
        for p, grad in zip(ps[:3], grads_of(ps[:3], step)):
            p.grad = grad
        for p, grad in zip(ref_ps[:3], grads_of(ps[:3], step)):
            p.grad = grad
        opt.step()
        ref.step()
        if extra == "schedule":  # a changing lr: tau = (lr_t/initial_lr)*wd
            for o in (opt, ref):
                for g in o.param_groups:
                    g["lr"] *= 0.5
    assert len(chained) == 3
    assert_same_state(opt, ps[:3], ref, ref_ps[:3], torch.float32)
    assert "delta_mu" in opt.state[ps[0]] and "delta_mu" not in opt.state[ps[2]]
    assert all(f not in o.state for f, o in zip(frozen, (opt, ref)))


class AdamHuber64:
    """Adam + decoupled Huber decay in float64, from the formulas (docs/decay.md): explicit
    decays p_t before the update, proximal after it; cautious decays where u*p_t >= 0."""

    def __init__(self, ps, lr, wd, form, cautious, betas=(0.9, 0.999), eps=1e-8):
        self.ps, self.lr, self.tau, self.form, self.cautious = ps, lr, lr * wd, form, cautious
        self.betas, self.eps, self.t = betas, eps, 0
        self.m = [torch.zeros_like(p) for p in ps]
        self.v = [torch.zeros_like(p) for p in ps]
        self.thresholds = [Threshold64(beta=0.9, scale=1.2) for _ in ps]

    def step(self, grads):
        self.t += 1
        b1, b2 = self.betas
        for i, (p, g) in enumerate(zip(self.ps, grads)):
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            u = (self.m[i] / (1 - b1**self.t)) / ((self.v[i] / (1 - b2**self.t)).sqrt() + self.eps)
            d = self.thresholds[i](p)
            mask = cautious_mask64(u, p) if self.cautious else None
            if self.form == "explicit":
                self.ps[i] = explicit64(p, self.tau, d, mask) - self.lr * u
            else:
                self.ps[i] = proximal64(p - self.lr * u, self.tau, d, mask)


@pytest.mark.parametrize("form, cautious", list(itertools.product(("explicit", "proximal"),
                                                                  (False, True))))
def test_chain_matches_a_float64_reference(chained, form, cautious):
    """The chain in float64 (the kernel computes in double) against Adam + adaptive Huber
    written here, weights and mu."""
    ps = make(F64)
    ref = AdamHuber64([p.detach().clone() for p in ps], 1e-2, 4.0, form, cautious)
    opt = with_decoupled_decay(torch.optim.Adam)(
        ps, lr=1e-2, weight_decay=4.0, fused=True, decay_form=form, cautious_decay=cautious,
        delta_scale=1.2, delta_beta=0.9)
    for step in range(4):
        grads = grads_of(ps, step)
        for p, grad in zip(ps, grads):
            p.grad = grad
        opt.step()
        ref.step(grads)
    assert len(chained) == 4
    for p, q, t in zip(ps, ref.ps, ref.thresholds):
        torch.testing.assert_close(p.detach(), q, rtol=1e-10, atol=1e-12)
        assert opt.state[p]["delta_mu"].item() == pytest.approx(t.mu, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Checkpoints: the chain, the unfused wrapper and torch's Adam read each other's state_dict
# ---------------------------------------------------------------------------------------------


def test_checkpoints_move_between_chain_unfused_wrapper_and_torch_adam(chained):
    options = dict(cautious_decay=True, amsgrad=True)
    ps = make()
    chain = build(torch.optim.Adam, ps, True, **options)
    train(chain, ps, 3)
    saved = copy.deepcopy(chain.state_dict())
    weights = [p.detach().clone() for p in ps]

    # chain -> unfused wrapper: both resume from the checkpoint, and agree to rounding
    unfused_ps = [torch.nn.Parameter(w.clone()) for w in weights]
    unfused = build(torch.optim.Adam, unfused_ps, False, **options)
    unfused.load_state_dict(copy.deepcopy(saved))
    for key, value in saved["state"][3].items():
        assert torch.equal(unfused.state[unfused_ps[3]][key], value), key
    train(chain, ps, 3, start=3)
    train(unfused, unfused_ps, 3, start=3)
    assert_same_state(chain, ps, unfused, unfused_ps, torch.float32)

    # chain -> torch's Adam (it keeps delta_mu as an extra entry) -> chain again
    plain_ps = [torch.nn.Parameter(w.clone()) for w in weights]
    plain = torch.optim.Adam(plain_ps, lr=1e-2, fused=True, amsgrad=True)
    plain.load_state_dict(copy.deepcopy(saved))
    for key, value in saved["state"][3].items():
        assert torch.equal(plain.state[plain_ps[3]][key], value), key
    plain.param_groups[0]["weight_decay"] = 0.0  # the wrapper's group says 0.5: Adam's L2
    train(plain, plain_ps, 1, start=3)
    back_ps = [torch.nn.Parameter(p.detach().clone()) for p in plain_ps]
    back = build(torch.optim.Adam, back_ps, True, **options)
    back.load_state_dict(copy.deepcopy(plain.state_dict()))
    again_ps = [torch.nn.Parameter(p.detach().clone()) for p in plain_ps]
    again = build(torch.optim.Adam, again_ps, False, **options)
    again.load_state_dict(copy.deepcopy(plain.state_dict()))
    calls = len(chained)
    train(back, back_ps, 2, start=4)
    train(again, again_ps, 2, start=4)
    assert len(chained) == calls + 2
    assert_same_state(back, back_ps, again, again_ps, torch.float32)


def test_torch_adam_checkpoint_without_delta_mu_starts_the_threshold(chained):
    """torch's Adam state has no delta_mu: the chain starts it at mean|p_t| (mu_1 = a_1), as the
    unfused wrapper does. (The groups carry the wrapper's keys: torch's load_state_dict takes the
    saved groups as they are, and torch's Adam's have no decay keys.)"""
    ps = make()
    plain = torch.optim.Adam(ps, lr=1e-2, fused=True)
    train(plain, ps, 2)
    runs = []
    for chain in (True, False):
        qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
        opt = build(torch.optim.Adam, qs, chain)
        saved = copy.deepcopy(plain.state_dict())
        saved["param_groups"][0] = {**opt.state_dict()["param_groups"][0],
                                    **saved["param_groups"][0], "weight_decay": 0.5}
        opt.load_state_dict(saved)
        mean = qs[2].detach().abs().mean()
        train(opt, qs, 1, start=2)
        runs.append((opt, qs))
        torch.testing.assert_close(opt.state[qs[2]]["delta_mu"], mean, rtol=1e-6, atol=0)
    assert_same_state(*runs[0], *runs[1], torch.float32)


# ---------------------------------------------------------------------------------------------
# GradScaler, refused steps, fallbacks
# ---------------------------------------------------------------------------------------------


def test_grad_scaler_steps_and_skips(chained):
    """A scaled step through the chain unscales the gradients in place, as the unfused wrapper's
    fused Adam does; a skipped step (inf gradient) changes nothing: weights, state, gradients."""
    runs = []
    for chain in (True, False):
        ps = make()[1:3]
        opt = build(torch.optim.Adam, ps, chain, cautious_decay=True)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        for step in range(3):
            opt.zero_grad()
            loss = sum((p * g).sum() for p, g in zip(ps, grads_of(ps, step)))
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        torch.testing.assert_close(ps[0].grad, grads_of(ps, 2)[0])  # unscaled in place
        weights = [p.detach().clone() for p in ps]
        state = copy.deepcopy(opt.state_dict())
        opt.zero_grad()
        scaler.scale((ps[0] * math.inf).sum() + (ps[1] * 1.0).sum()).backward()
        scaled = [p.grad.clone() for p in ps]
        scaler.step(opt)
        assert all(torch.equal(p, w) for p, w in zip(ps, weights))
        assert all(torch.equal(p.grad, g) for p, g in zip(ps, scaled))  # still scaled
        for i, entry in state["state"].items():
            for key, value in entry.items():
                assert torch.equal(opt.state[ps[i]][key], value), key
        runs.append((opt, ps))
    assert len(chained) == 3
    assert_same_state(*runs[0], *runs[1], torch.float32)


def test_refused_sparse_step_changes_nothing(chained):
    ps = make()[1:3]
    opt = build(torch.optim.Adam, ps, True)
    train(opt, ps, 1)
    weights = [p.detach().clone() for p in ps]
    state = copy.deepcopy(opt.state_dict())
    ps[0].grad = torch.ones(7).to_sparse()
    ps[1].grad = torch.ones(33, 17)
    assert "differs" in fused_chain.chain_reason(opt)
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert all(torch.equal(p, w) for p, w in zip(ps, weights))
    for i, entry in state["state"].items():
        for key, value in entry.items():
            assert torch.equal(opt.state[ps[i]][key], value), key


class AdamSub(torch.optim.Adam):
    pass


FALLBACKS = {
    "sgd base": (torch.optim.SGD, dict(lr=1e-2), "is not torch.optim.Adam"),
    "adam subclass": (AdamSub, dict(fused=True), "is not torch.optim.Adam"),
    "fused unset": (torch.optim.Adam, dict(), "fused=True"),
    "foreach": (torch.optim.Adam, dict(foreach=True), "fused=True"),
    "cpr": (torch.optim.Adam, dict(fused=True, decay="cpr"), "cpr"),
    "stable": (torch.optim.Adam, dict(fused=True, decay_scaling="stable"), "stable"),
}


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_ineligible_steps_fall_back_to_the_unfused_path(chained, case):
    """Each ineligible case says why, and steps exactly as with the chain switched off."""
    base, kw, reason = FALLBACKS[case]
    runs = []
    for chain in (True, False):
        ps = make()[1:3]
        opt = with_decoupled_decay(base)(ps, weight_decay=0.5, **{"lr": 1e-2, **kw})
        opt._fused_chain = chain
        for p, grad in zip(ps, grads_of(ps, 0)):
            p.grad = grad
        if chain:
            assert reason in fused_chain.chain_reason(opt)
        train(opt, ps, 2)
        runs.append(ps)
    assert not chained
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_one_ineligible_group_keeps_the_whole_step_unfused(chained):
    ps = make()
    W = with_decoupled_decay(torch.optim.Adam)
    opt = W([{"params": ps[:2]}, {"params": ps[2:], "decay_scaling": "stable"}],
            lr=1e-2, weight_decay=0.5, fused=True)
    for p, grad in zip(ps, grads_of(ps, 0)):
        p.grad = grad
    assert "stable" in fused_chain.chain_reason(opt)
    opt.step()
    assert not chained
    ps[2].requires_grad_(False)
    ps[3].requires_grad_(False)
    for p in ps[2:]:
        p.grad = None
    ps[0].grad, ps[1].grad = grads_of(ps[:2], 5)
    assert fused_chain.chain_reason(opt) is None  # a group without gradients does not count
    opt.step()
    assert len(chained) == 1


def test_closure_and_hooks_run_once(chained):
    ps = make()[1:2]
    opt = build(torch.optim.AdamW, ps, True)
    seen = []
    opt.register_step_pre_hook(lambda *a: seen.append("pre"))
    opt.register_step_post_hook(lambda *a: seen.append("post"))

    def closure():
        seen.append("closure")
        opt.zero_grad()
        loss = (ps[0] ** 2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert seen == ["pre", "closure", "post"] and len(chained) == 1
    assert loss.item() == pytest.approx((make()[1] ** 2).sum().item())


def test_cautious_mask_where_the_update_rounds_away(chained):
    """Where Adam's update is below half an ulp of p (p_new == p_t in float32), the chain decides
    the mask by sign(u) (exp_avg's sign, as AdamHD and arXiv 2510.12402 define it); the unfused
    wrapper sees a zero displacement and decays. Elsewhere they agree."""
    runs = {}
    for chain in (True, False):
        p = torch.nn.Parameter(torch.tensor([-1.0, 1.0]))
        opt = with_decoupled_decay(torch.optim.Adam)(
            [p], lr=1e-3, weight_decay=0.5, decay="l2", cautious_decay=True, fused=True)
        opt._fused_chain = chain
        p.grad = torch.ones(2)
        opt.step()  # u ~ 1 > 0: p[0] < 0 is exempt, p[1] decays
        after_one = p.detach().clone()
        p.grad = torch.full((2,), -0.89999)  # m = 0.1 + 0.1*(g - 0.1) ~ 1e-6 > 0, |lr*u| ~ 6e-9
        opt.step()
        assert opt.state[p]["exp_avg"].gt(0).all()
        runs[chain] = (after_one, p.detach().clone())
    (one, chain_p), (ref_one, unfused_p) = runs[True], runs[False]
    tau = 1e-3 * 0.5
    torch.testing.assert_close(one, ref_one)
    assert chain_p[0] == one[0]  # sign(u) > 0 > p: no decay, and the update rounds away
    torch.testing.assert_close(unfused_p[0], ref_one[0] * (1 - tau))  # displacement 0: decays
    torch.testing.assert_close(chain_p[1], unfused_p[1])  # both decay where u*p > 0
    assert len(chained) == 2
