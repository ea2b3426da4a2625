"""Native decay (``adamhd.decay.native``): the survey optimizers' ``weight_decay`` through the
decay rules. Float64 references written here (Huber explicit/proximal, cautious, adaptive
threshold), the former L2 default bit for bit, state across ``load_state_dict``, bad options
refused before anything changes."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import partial

import pytest
import torch

from adamhd import NSGDA, AdaLo, AdaMomentum, FCAdam, with_decoupled_decay
from adamhd.decay.native import StepDecay, decay_options, decayed_update_
from adamhd.optim._base import CheckedOptimizer
from adamhd.optim.adamem import AdaptiveMemorySGD
from tests.optim import common

F64 = torch.float64
SHAPES = [(5, 7), (9,), ()]
STEPS = 5


# ---------------------------------------------------------------------------------------------
# float64 references
# ---------------------------------------------------------------------------------------------


class RefThreshold:
    """``d_t``: fixed, or ``scale * mu_t`` with ``mu_1 = a_1``, ``mu_t = beta*mu + (1-beta)*a_t``,
    ``a_t = mean|p_t|``."""

    def __init__(self, delta, scale=1.5, beta=0.99):
        self.delta, self.scale, self.beta, self.mu = delta, scale, beta, None

    def __call__(self, p_t):
        if self.delta != "adaptive":
            return self.delta
        a = float(p_t.abs().mean())
        self.mu = a if self.mu is None else self.beta * self.mu + (1 - self.beta) * a
        return self.scale * self.mu


def clip(x, d):
    return x.clamp(-d, d) if math.isfinite(d) else x


def ref_decayed(p_t, q, u, tau, d, form, cautious):
    """The weight after a step with update ``q - p_t = -lr*u`` and the decay rule."""
    keep = (torch.sign(u) * p_t >= 0).to(F64) if cautious else torch.ones_like(p_t)
    if form == "explicit":
        return p_t - tau * keep * clip(p_t, d) + (q - p_t)
    prox = q - tau / (1 + tau) * clip(q, (1 + tau) * d)
    return keep * prox + (1 - keep) * q


def ref_nsgda(p, grads, lr, momentum, eps, wd, rule):
    p, m = p.clone(), torch.zeros_like(p)
    threshold = RefThreshold(rule["delta"])
    for t, g in enumerate(grads, 1):
        m = momentum * m + (1 - momentum) * g
        m_hat = m / (1 - momentum**t)
        u = m_hat / (torch.linalg.vector_norm(m_hat) + eps)
        d = threshold(p)
        p = ref_decayed(p, p - lr * u, u, lr * wd, d, rule["form"], rule["cautious"])
    return p, threshold.mu


def ref_adamomentum(p, grads, lr, b1, b2, eps, wd, rule):
    p, m, v = p.clone(), torch.zeros_like(p), torch.zeros_like(p)
    threshold = RefThreshold(rule["delta"])
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * m * m + eps
        u = (m / (1 - b1**t)) / torch.sqrt(v / (1 - b2**t))
        d = threshold(p)
        p = ref_decayed(p, p - lr * u, u, lr * wd, d, rule["form"], rule["cautious"])
    return p, threshold.mu


def ref_adalo(p, grads, losses, lr, b1, b2, kappa, eps, wd, rule):
    p, m, e = p.clone(), torch.zeros_like(p), 0.0
    threshold = RefThreshold(rule["delta"])
    for g, loss in zip(grads, losses):
        m = b1 * m + (1 - b1) * g
        e = b2 * e + (1 - b2) * (math.tanh(-math.log1p(loss) / 2) + 1) / 2
        lr_t = lr * max(e / kappa, eps)
        d = threshold(p)
        p = ref_decayed(p, p - lr_t * m, m, lr_t * wd, d, rule["form"], rule["cautious"])
    return p, threshold.mu


RULES = {
    "huber-explicit": dict(decay="huber", delta=0.3, form="explicit", cautious=False),
    "huber-proximal": dict(decay="huber", delta=0.3, form="proximal", cautious=False),
    "huber-adaptive-cautious": dict(decay="huber", delta="adaptive", form="explicit",
                                    cautious=True),
    "huber-adaptive-proximal-cautious": dict(decay="huber", delta="adaptive", form="proximal",
                                             cautious=True),
    "l2-proximal-cautious": dict(decay="l2", delta=math.inf, form="proximal", cautious=True),
}


def _keys(rule):
    keys = dict(decay=rule["decay"], decay_form=rule["form"], cautious_decay=rule["cautious"])
    if rule["decay"] == "huber":
        keys["delta"] = rule["delta"]
    return keys


def _setup(shape, n=STEPS, seed=3):
    gen = torch.Generator().manual_seed(seed)
    p0 = torch.randn(shape, generator=gen, dtype=F64)
    return p0, [torch.randn(shape, generator=gen, dtype=F64) for _ in range(n)]


def _run(opt, p, grads, losses=None):
    for t, g in enumerate(grads):
        p.grad = g.clone()
        opt.step(loss=losses[t]) if losses else opt.step()


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("name", ["nsgda", "adamomentum", "adalo"])
def test_native_rules_match_float64_reference(name, rule_name):
    rule = RULES[rule_name]
    for shape in SHAPES:
        p0, grads = _setup(shape)
        p = p0.clone().requires_grad_()
        losses = common.losses(STEPS)
        if name == "nsgda":
            opt = NSGDA([p], lr=0.05, momentum=0.8, eps=1e-8, weight_decay=2.0, **_keys(rule))
            _run(opt, p, grads)
            want, mu = ref_nsgda(p0, grads, 0.05, 0.8, 1e-8, 2.0, rule)
        elif name == "adamomentum":
            opt = AdaMomentum([p], lr=0.05, betas=(0.8, 0.9), weight_decay=2.0, **_keys(rule))
            _run(opt, p, grads)
            want, mu = ref_adamomentum(p0, grads, 0.05, 0.8, 0.9, 1e-8, 2.0, rule)
        else:
            opt = AdaLo([p], lr=2.0, betas=(0.8, 0.9), weight_decay=3.0, **_keys(rule))
            _run(opt, p, grads, losses)
            want, mu = ref_adalo(p0, grads, losses, 2.0, 0.8, 0.9, 3.0, 1e-8, 3.0, rule)
        torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-13, msg=str(shape))
        if rule["delta"] == "adaptive":
            assert opt.state[p]["delta_mu"].dtype == F64
            assert float(opt.state[p]["delta_mu"]) == pytest.approx(mu, rel=1e-13)
        else:
            assert "delta_mu" not in opt.state[p]


def test_the_decay_changes_the_weights():
    """The references above are not all the same run: Huber and L2 differ here."""
    p0, grads = _setup((5, 7))
    out = {}
    for decay in ("huber", "l2"):
        p = p0.clone().requires_grad_()
        _run(NSGDA([p], lr=0.05, weight_decay=2.0, decay=decay, delta=0.3), p, grads)
        out[decay] = p.detach()
    assert (out["huber"] - out["l2"]).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# the default: the former L2, bit for bit
# ---------------------------------------------------------------------------------------------


def _old_l2_then_step(cls, kwargs, params, grads, per_tensor_first=False):
    """The former decay written here: ``p *= 1 - lr*wd`` (``torch._foreach_mul_``), then the
    optimizer's step without decay (its update does not read ``p``)."""
    lr, wd = kwargs["lr"], kwargs["weight_decay"]
    opt = cls(params, **{**kwargs, "weight_decay": 0.0})
    for t in range(len(grads[0])):
        for p, gs in zip(params, grads):
            p.grad = gs[t].to(p.dtype)
        with torch.no_grad():
            if per_tensor_first and t == 0:  # AM-SGD's first step decayed tensor by tensor
                for p in params:
                    p.mul_(1.0 - lr * wd)
            else:
                torch._foreach_mul_(params, 1.0 - lr * wd)
        opt.step()
    return opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["nsgda", "adamomentum", "fcadam", "amsgd"])
def test_default_is_the_former_l2_bit_for_bit(name, dtype):
    cases = {**common.CASES, "amsgd": (AdaptiveMemorySGD, dict(lr=0.05, weight_decay=0.1))}
    cls, kwargs = cases[name]
    grads = [g for g in (common.grads_for(s, STEPS, seed=i) for i, s in enumerate(SHAPES))]
    p0 = [torch.randn(s, generator=torch.Generator().manual_seed(7)) for s in SHAPES]
    new = [p.to(dtype).clone().requires_grad_() for p in p0]
    old = [p.to(dtype).clone().requires_grad_() for p in p0]
    opt = cls(new, **kwargs)
    common.run(opt, new, grads)
    _old_l2_then_step(cls, kwargs, old, grads, per_tensor_first=name == "amsgd")
    for a, b in zip(new, old):
        assert torch.equal(a, b)
    assert opt.param_groups[0]["decay"] == "l2"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adalo_default_is_the_former_l2_bit_for_bit(dtype):
    """AdaLo's former step, written here: ``p.mul_(1 - lr_t*wd); p.sub_(m*lr_t)``."""
    lr, b1, b2, kappa, eps, wd = 2.0, 0.8, 0.9, 3.0, 1e-8, 0.1
    p0, grads = _setup((6, 5))
    p = p0.to(dtype).requires_grad_()
    opt = AdaLo([p], lr=lr, betas=(b1, b2), weight_decay=wd, kappa=kappa, eps=eps)
    q = p0.to(dtype)
    m, ema = torch.zeros_like(q), torch.zeros((), dtype=torch.float32)
    for g, loss in zip(grads, common.losses(STEPS)):
        p.grad = g.to(dtype)
        opt.step(loss=loss)
        m.lerp_(g.to(dtype), 1.0 - b1)
        level = (torch.tanh(-torch.log1p(torch.tensor(loss, dtype=F64)) * 0.5) + 1.0) * 0.5
        ema.lerp_(level.to(ema), 1.0 - b2)
        lr_t = (ema / kappa).clamp_min(eps) * lr
        q.mul_(1.0 - lr_t * wd)
        q.sub_(m * lr_t)
    assert torch.equal(p.detach(), q)


def test_schedule_scaling_follows_the_lr_multiplier():
    """``decay_scaling="schedule"``: ``tau = (lr_t/initial_lr)*weight_decay``; here lr halves
    after construction, so the L2 factor is ``1 - 0.5*wd`` (NSGDA's update written here)."""
    p0, grads = _setup((4, 3), n=1)
    p = p0.clone().requires_grad_()
    opt = NSGDA([p], lr=0.2, momentum=0.5, weight_decay=0.1, decay_scaling="schedule")
    assert opt.param_groups[0]["initial_lr"] == 0.2
    opt.param_groups[0]["lr"] = 0.1
    _run(opt, p, grads)
    m_hat = grads[0]  # (1 - mu)*g / (1 - mu)
    want = p0 * (1 - 0.5 * 0.1) - 0.1 * m_hat / (torch.linalg.vector_norm(m_hat) + 1e-8)
    torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-14)


@dataclass(frozen=True)
class SignHyper:
    lr: float
    step_decay: StepDecay | None


class SignSGD(CheckedOptimizer):
    """A new optimizer on the shared loop: ``hyper_type`` with a ``step_decay`` field (filled by
    the base), per-tensor steps (``foreach=False``) as a single-tensor optimizer writes them."""

    name = "SignSGD"
    native_decay = True
    hyper_type = SignHyper

    def __init__(self, params, lr=0.1, weight_decay=0.0, *, maximize=False, **decay):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, maximize=maximize,
                                      **decay_options(self.name, decay)))

    def check_group(self, group):
        pass

    def init_state(self, p, group):
        return self.state[p]

    def group_step(self, params, grads, states, hyper):
        for p, g, state in zip(params, grads, states):
            u = torch.sign(g)
            decayed_update_(hyper.step_decay, [p], [state], hyper.lr,
                            partial(p.add_, u, alpha=-hyper.lr), signs=[u], foreach=False)


@pytest.mark.parametrize("rule_name", ["huber-explicit", "huber-adaptive-proximal-cautious"])
def test_a_hyper_record_gets_its_step_decay_from_the_base(rule_name):
    rule = RULES[rule_name]
    p0, grads = _setup((6, 3))
    p = p0.clone().requires_grad_()
    opt = SignSGD([p], lr=0.05, weight_decay=1.5, **_keys(rule))
    _run(opt, p, grads)
    want, threshold = p0.clone(), RefThreshold(rule["delta"])
    for g in grads:
        u = torch.sign(g)
        want = ref_decayed(want, want - 0.05 * u, u, 0.05 * 1.5, threshold(want), rule["form"],
                           rule["cautious"])
    torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# state: load_state_dict, a step without gradients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [NSGDA, AdaMomentum])
def test_adaptive_threshold_state_survives_load_state_dict(cls):
    keys = dict(lr=0.05, weight_decay=1.0, decay="huber", cautious_decay=True)
    p0, grads = _setup((6, 4), n=6)
    p = p0.to(torch.bfloat16).requires_grad_()
    opt = cls([p], **keys)
    _run(opt, p, [g.to(torch.bfloat16) for g in grads[:3]])
    assert opt.state[p]["delta_mu"].dtype == torch.float32
    saved = copy.deepcopy(opt.state_dict())
    q = p.detach().clone().requires_grad_()
    loaded = cls([q], **keys)
    loaded.load_state_dict(saved)
    assert loaded.state[q]["delta_mu"].dtype == torch.float32  # not cast to bf16
    assert torch.equal(loaded.state[q]["delta_mu"], opt.state[p]["delta_mu"])
    _run(opt, p, [g.to(torch.bfloat16) for g in grads[3:]])
    _run(loaded, q, [g.to(torch.bfloat16) for g in grads[3:]])
    assert torch.equal(p, q)
    assert torch.equal(loaded.state[q]["delta_mu"], opt.state[p]["delta_mu"])


def test_step_without_gradient_leaves_threshold_unchanged():
    p0, grads = _setup((4, 4))
    p = p0.clone().requires_grad_()
    opt = NSGDA([p], lr=0.05, weight_decay=1.0, decay="huber")
    _run(opt, p, grads[:2])
    mu = opt.state[p]["delta_mu"].clone()
    p.grad = None
    opt.step()
    assert torch.equal(opt.state[p]["delta_mu"], mu)


# ---------------------------------------------------------------------------------------------
# bad options
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [NSGDA, AdaLo, AdaMomentum, FCAdam, AdaptiveMemorySGD])
def test_bad_options_refused_at_construction(cls):
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="Invalid decay: 'bogus'"):
        cls([p], decay="bogus")
    with pytest.raises(ValueError, match="Invalid delta"):
        cls([p], decay="huber", delta=-1.0)
    with pytest.raises(ValueError, match="Invalid decay_form"):
        cls([p], decay_form="implicit")
    with pytest.raises(TypeError, match="decy"):
        cls([p], decy="l2")


@pytest.mark.parametrize("edit", [dict(delta=0.0), dict(decay="cpr"), dict(cautious_decay=1),
                                  dict(decay_scaling="schedule", initial_lr=0.0)])
def test_edited_group_refused_before_anything_changes(edit):
    a, b = torch.ones(4, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = NSGDA([{"params": [a]}, {"params": [b]}], lr=0.1, weight_decay=0.5, decay="huber")
    for p in (a, b):
        p.grad = torch.ones_like(p)
    opt.step()
    before = common.snapshot([a, b], opt)
    opt.param_groups[1].update(edit)
    with pytest.raises(ValueError):
        opt.step()
    after = common.snapshot([a, b], opt)
    for x, y in zip(before[0], after[0]):
        assert torch.equal(x, y)
    common.assert_state_equal(before[1]["state"], after[1]["state"])


def test_cautious_refused_where_the_optimizer_has_no_update_sign():
    class NoSign(NSGDA):
        cautious_decay_reason = "its update's sign is not known before the step"

    p = torch.zeros(3, requires_grad=True)
    NoSign([p], decay="huber")
    with pytest.raises(ValueError, match="NSGDA cannot apply cautious_decay=True natively: its"):
        NoSign([p], cautious_decay=True)


def test_wrapper_owns_the_decay_keys():
    """with_decoupled_decay(NSGDA): the wrapper's rules (CPR here), the base's decay off."""
    p0, grads = _setup((4, 5))
    p = p0.clone().requires_grad_()
    opt = with_decoupled_decay(NSGDA)([p], lr=0.05, weight_decay=1.0, decay="cpr")
    _run(opt, p, grads)
    assert "cpr_lambda" in opt.state[p] and "delta_mu" not in opt.state[p]
    q = p0.clone().requires_grad_()
    _run(NSGDA([q], lr=0.05), q, grads)  # the base without decay: the same until CPR acts
    torch.testing.assert_close(p.detach(), q.detach())  # warm start: kappa = inf for 1000 steps
