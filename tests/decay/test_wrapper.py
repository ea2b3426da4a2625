"""``with_decoupled_decay``: torch optimizers with decoupled L2/Huber/cautious decay.

Each claim is checked with numbers: bit-for-bit equality with torch's own decoupled decay where
the two run the same ops, float64 references (tests/decay/reference64.py) elsewhere.
"""

from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import torch

from adamhd import with_decoupled_decay
from tests.decay.reference64 import Threshold64, cautious_mask64, explicit64, proximal64

F64 = torch.float64


def make_params(shapes, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def clone_params(params):
    return [p.detach().clone().requires_grad_() for p in params]


def grads_for(params, seed):
    g = torch.Generator().manual_seed(1000 + seed)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]


def set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()


# ---------------------------------------------------------------------------------------------
# decay="l2" is torch's own decoupled decay, bit for bit
# ---------------------------------------------------------------------------------------------

PATHS = {"single": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_l2_is_adamw_bit_for_bit(path, amsgrad):
    shapes = [(7, 5), (5,), (3, 4)]
    ours, theirs = make_params(shapes), make_params(shapes)

    def groups(ps, wd_key):
        return [{"params": ps[:2]}, {"params": ps[2:], wd_key: 0.3}]

    kw = dict(lr=3e-2, amsgrad=amsgrad, maximize=True, **PATHS[path])
    opt = with_decoupled_decay(torch.optim.Adam)(
        groups(ours, "weight_decay"), weight_decay=0.1, decay="l2", **kw
    )
    ref = torch.optim.AdamW(groups(theirs, "weight_decay"), weight_decay=0.1, **kw)
    for step in range(4):
        grads = grads_for(ours, step)
        set_grads(ours, grads)
        set_grads(theirs, grads)
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    for a, b in zip(ours, theirs):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[a][key], ref.state[b][key])
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.3]


@pytest.mark.parametrize(
    "base, kwargs",
    [
        (torch.optim.NAdam, dict(decoupled_weight_decay=True)),
        (torch.optim.RAdam, dict(decoupled_weight_decay=True)),
        (torch.optim.Muon, dict()),
    ],
    ids=["nadam", "radam", "muon"],
)
def test_l2_is_torchs_decoupled_option_bit_for_bit(base, kwargs):
    """NAdam/RAdam(decoupled_weight_decay=True) and Muon decay as ``p*(1 - lr*wd)`` before the
    update, as the wrapper's explicit L2 rule."""
    ours, theirs = make_params([(6, 4), (4, 5)]), make_params([(6, 4), (4, 5)])
    opt = with_decoupled_decay(base)(ours, lr=2e-2, weight_decay=0.2, decay="l2")
    ref = base(theirs, lr=2e-2, weight_decay=0.2, **kwargs)
    for step in range(3):
        grads = grads_for(ours, step)
        set_grads(ours, grads)
        set_grads(theirs, grads)
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# Huber decay on each optimizer = its own undecayed step + the rule (float64)
# ---------------------------------------------------------------------------------------------


def _lion():
    po = pytest.importorskip("pytorch_optimizer")
    return po.Lion, dict(lr=1e-2)


def _heavyball(monkeypatch):
    heavyball = pytest.importorskip("heavyball")
    monkeypatch.setattr(heavyball.utils, "compile_mode", None)  # eager: no compile on CPU
    return heavyball.SGD, dict(lr=1e-2, beta=0.9)


BASES = {
    "sgd": lambda mp: (torch.optim.SGD, dict(lr=5e-2, momentum=0.9)),
    "adam": lambda mp: (torch.optim.Adam, dict(lr=1e-2)),
    "nadam": lambda mp: (torch.optim.NAdam, dict(lr=1e-2)),
    "radam": lambda mp: (torch.optim.RAdam, dict(lr=1e-2)),
    "rmsprop": lambda mp: (torch.optim.RMSprop, dict(lr=1e-2)),
    "adagrad": lambda mp: (torch.optim.Adagrad, dict(lr=5e-2)),
    "adafactor": lambda mp: (torch.optim.Adafactor, dict(lr=1e-2)),
    "muon": lambda mp: (torch.optim.Muon, dict(lr=2e-2)),
    "lion": lambda mp: _lion(),
    "heavyball_sgd": _heavyball,
}


def base_without_decay(base, params, kwargs):
    import inspect

    if "weight_decay" in inspect.signature(base.__init__).parameters:
        kwargs = {**kwargs, "weight_decay": 0.0}
    return base(params, **kwargs)


@pytest.mark.parametrize("form", ["explicit", "proximal"])
@pytest.mark.parametrize("name", list(BASES))
def test_huber_decay_is_base_step_plus_rule_float64(name, form, monkeypatch):
    base, kwargs = BASES[name](monkeypatch)
    shapes = [(6, 5), (4, 6)] if name == "muon" else [(6, 5), (7,)]
    ours = make_params(shapes, F64)
    theirs = clone_params(ours)
    wd, lr = 3.0, kwargs["lr"]  # strong decay so that the rule is visible
    opt = with_decoupled_decay(base)(ours, weight_decay=wd, decay_form=form, **kwargs)
    ref = base_without_decay(base, theirs, kwargs)
    thresholds = [Threshold64() for _ in theirs]
    for step in range(4):
        grads = grads_for(ours, step)
        set_grads(ours, grads)
        set_grads(theirs, grads)
        opt.step()
        tau = lr * wd
        ds = [t(p.detach()) for t, p in zip(thresholds, theirs)]
        with torch.no_grad():
            if form == "explicit":
                for p, d in zip(theirs, ds):
                    p.copy_(explicit64(p, tau, d))
            ref.step()
            if form == "proximal":
                for p, d in zip(theirs, ds):
                    p.copy_(proximal64(p, tau, d))
    for a, b, t in zip(ours, theirs, thresholds):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert opt.state[a]["delta_mu"].dtype == F64
        assert opt.state[a]["delta_mu"].item() == pytest.approx(t.mu, rel=1e-12)
    # the decay did something: an undecayed run ends elsewhere
    assert not torch.allclose(ours[0], make_params(shapes, F64)[0], atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Cautious decay (arXiv 2510.12402) against a float64 Adam written here
# ---------------------------------------------------------------------------------------------


class Adam64:
    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def updates(self, grads):
        """u = m_hat/(sqrt(v_hat)+eps) for each tensor."""
        self.t += 1
        b1, b2 = self.betas
        out = []
        for m, v, g in zip(self.m, self.v, grads):
            m.mul_(b1).add_((1 - b1) * g)
            v.mul_(b2).add_((1 - b2) * g * g)
            m_hat, v_hat = m / (1 - b1**self.t), v / (1 - b2**self.t)
            out.append(m_hat / (v_hat.sqrt() + self.eps))
        return out


@pytest.mark.parametrize("delta", ["adaptive", 0.4, math.inf], ids=["adaptive", "fixed", "l2"])
@pytest.mark.parametrize("form", ["explicit", "proximal"])
def test_cautious_decay_matches_float64_reference(form, delta):
    ours = make_params([(8, 6), (6,)], F64)
    theirs = [p.detach().clone() for p in ours]
    lr, wd = 1e-2, 4.0
    opt = with_decoupled_decay(torch.optim.Adam)(
        ours, lr=lr, weight_decay=wd, delta=delta, decay_form=form, cautious_decay=True
    )
    ref = Adam64(theirs, lr)
    thresholds = [Threshold64() for _ in theirs]
    masked_out = 0
    for step in range(4):
        grads = grads_for(ours, step)
        grads[0][:2] = 0.0  # u == 0 on step 1: those coordinates must still decay (>=)
        set_grads(ours, grads)
        opt.step()
        tau = lr * wd
        us = ref.updates(grads)
        for i, (p, u) in enumerate(zip(theirs, us)):
            d = thresholds[i](p) if delta == "adaptive" else delta
            mask = cautious_mask64(u, p)
            masked_out += int((~mask).sum())
            if form == "explicit":
                new = explicit64(p, tau, d, mask) - lr * u
            else:
                new = proximal64(p - lr * u, tau, d, mask)
            theirs[i] = new
    assert masked_out > 0  # the mask exempted some coordinates
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b, rtol=1e-10, atol=1e-12)


def test_cautious_zero_update_still_decays():
    """A coordinate the base step does not move (u == 0) decays, as without the mask."""
    p = torch.tensor([2.0, -2.0, 0.5], dtype=F64, requires_grad=True)
    opt = with_decoupled_decay(torch.optim.SGD)(
        [p], lr=0.1, weight_decay=1.0, decay="l2", cautious_decay=True
    )
    p.grad = torch.tensor([0.0, 1.0, -1.0], dtype=F64)  # u = g: 0, opposite sign, opposite sign
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([1.8, -2.1, 0.6], dtype=F64))


# ---------------------------------------------------------------------------------------------
# State: state_dict round trip, dtype of delta_mu, GradScaler skips, schedulers
# ---------------------------------------------------------------------------------------------


def _train(opt, params, steps, start):
    for step in range(start, start + steps):
        set_grads(params, grads_for(params, step))
        opt.step()


@pytest.mark.parametrize("cautious", [False, True])
def test_state_dict_round_trip_resumes_bit_exact(cautious):
    W = with_decoupled_decay(torch.optim.RAdam)
    kw = dict(lr=1e-2, weight_decay=0.5, cautious_decay=cautious, decay_form="proximal")
    params = make_params([(5, 4), (4,)])
    opt = W(params, **kw)
    _train(opt, params, 3, 0)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    saved_params = clone_params(params)
    _train(opt, params, 3, 3)

    resumed = W(saved_params, **kw)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    _train(resumed, saved_params, 3, 3)
    for a, b in zip(params, saved_params):
        assert torch.equal(a, b)
        for key, value in opt.state[a].items():
            assert torch.equal(value, resumed.state[b][key]), key


def test_delta_mu_stays_float32_for_bfloat16_weights_across_load():
    W = with_decoupled_decay(torch.optim.Adam)
    params = make_params([(6, 5)], torch.bfloat16)
    opt = W(params, lr=1e-2)
    _train(opt, params, 2, 0)
    mu = opt.state[params[0]]["delta_mu"]
    assert mu.dtype == torch.float32
    other = W(clone_params(params), lr=1e-2)
    other.load_state_dict(copy.deepcopy(opt.state_dict()))
    loaded = other.state[other.param_groups[0]["params"][0]]
    assert loaded["delta_mu"].dtype == torch.float32
    assert torch.equal(loaded["delta_mu"], mu)  # not rounded through bfloat16
    assert loaded["exp_avg"].dtype == torch.bfloat16  # the rest as torch loads it


def test_schedule_scaling_follows_the_multiplier():
    """decay_scaling="schedule": tau = (lr_t/initial_lr)*wd; "lr": tau = lr_t*wd."""
    for scaling in ("schedule", "lr"):
        p = make_params([(4, 3)], F64)[0]
        ref = p.detach().clone()
        opt = with_decoupled_decay(torch.optim.SGD)(
            [p], lr=0.5, weight_decay=0.1, decay="l2", decay_scaling=scaling
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))
        for step in range(4):
            lr = 0.5 / (1 + step)
            assert opt.param_groups[0]["lr"] == pytest.approx(lr)
            g = grads_for([p], step)[0]
            p.grad = g.clone()
            opt.step()
            sched.step()
            tau = (lr / 0.5) * 0.1 if scaling == "schedule" else lr * 0.1
            ref = ref * (1 - tau) - lr * g
        torch.testing.assert_close(p.detach(), ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("fused", [False, True])
def test_grad_scaler_skipped_step_changes_nothing(fused):
    """An inf gradient: no decay, no state change (fused Adam is called with found_inf)."""
    W = with_decoupled_decay(torch.optim.Adam)
    params = make_params([(5, 3)])
    opt = W(params, lr=1e-2, weight_decay=0.5, fused=fused, cautious_decay=fused)
    assert getattr(opt, "_step_supports_amp_scaling", False) == fused
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)

    def scaled_step(grad):
        opt.zero_grad()
        scaler.scale((params[0] * grad).sum()).backward()  # d/dp = grad * scale
        scaler.step(opt)
        scaler.update()

    scaled_step(torch.ones(5, 3))
    weights = clone_params(params)
    state = copy.deepcopy(opt.state[params[0]])
    grad = torch.ones(5, 3)
    grad[1, 1] = math.inf
    scaled_step(grad)
    assert torch.equal(params[0], weights[0])
    assert state.keys() == opt.state[params[0]].keys()
    for key, value in state.items():
        assert torch.equal(opt.state[params[0]][key], value), key
    assert scaler.get_scale() == 2.0  # the scaler saw the inf
    scaled_step(torch.ones(5, 3))
    assert not torch.equal(params[0], weights[0])  # the next finite step runs


def test_torch_compile_of_a_step_matches_eager():
    W = with_decoupled_decay(torch.optim.Adam)
    eager_p, compiled_p = make_params([(6, 4)]), make_params([(6, 4)])
    kw = dict(lr=1e-2, weight_decay=0.5, delta=0.3, foreach=False)
    eager, compiled = W(eager_p, **kw), W(compiled_p, **kw)
    step = torch.compile(compiled.step)
    for i in range(2):
        grads = grads_for(eager_p, i)
        set_grads(eager_p, grads)
        set_grads(compiled_p, grads)
        eager.step()
        step()
    torch.testing.assert_close(compiled_p[0], eager_p[0], rtol=1e-6, atol=1e-7)
    assert not torch.equal(compiled_p[0], make_params([(6, 4)])[0])


# ---------------------------------------------------------------------------------------------
# The class: pickling, hooks, arguments
# ---------------------------------------------------------------------------------------------


def test_classes_and_instances_pickle_and_are_cached():
    W = with_decoupled_decay(torch.optim.Adagrad)
    assert W is with_decoupled_decay(torch.optim.Adagrad)
    assert issubclass(W, torch.optim.Adagrad) and issubclass(W, torch.optim.Optimizer)
    assert pickle.loads(pickle.dumps(W)) is W
    params = make_params([(3, 3)])
    opt = W(params, lr=0.1, weight_decay=0.2, delta=0.5)
    _train(opt, params, 1, 0)
    back = pickle.loads(pickle.dumps(opt))
    assert type(back) is W and back.defaults == opt.defaults
    clone = copy.deepcopy(opt)
    assert type(clone) is W and clone.param_groups[0]["delta"] == 0.5


def test_step_hooks_run_once_per_step():
    W = with_decoupled_decay(torch.optim.Adam)
    torch.optim.Adam(make_params([(2,)]))  # Adam's own step is now hooked too
    params = make_params([(3,)])
    opt = W(params)
    calls = []
    opt.register_step_pre_hook(lambda *a: calls.append("pre"))
    opt.register_step_post_hook(lambda *a: calls.append("post"))
    _train(opt, params, 2, 0)
    assert calls == ["pre", "post", "pre", "post"]


def test_base_weight_decay_is_zero_and_positional_weight_decay_is_decoupled():
    """Adam(params, lr, betas, eps, weight_decay): positional weight_decay becomes the
    decoupled coefficient; the base never sees a non-zero weight_decay."""
    params = make_params([(4, 4)])
    ref_params = clone_params(params)
    opt = with_decoupled_decay(torch.optim.Adam)(params, 1e-2, (0.9, 0.999), 1e-8, 0.3, decay="l2")
    ref = torch.optim.AdamW(ref_params, 1e-2, (0.9, 0.999), 1e-8, 0.3)
    seen = []
    opt.register_step_pre_hook(lambda o, *a: seen.append(o.param_groups[0]["weight_decay"]))
    _train(opt, params, 2, 0)
    _train(ref, ref_params, 2, 0)
    assert torch.equal(params[0], ref_params[0])
    assert opt.param_groups[0]["weight_decay"] == 0.3


def test_defaults():
    W = with_decoupled_decay(torch.optim.SGD)
    opt = W(make_params([(2,)]), lr=0.1)
    assert opt.defaults["weight_decay"] == 1e-2  # SGD's own default is 0: AdamW's 1e-2
    assert opt.defaults["decay"] == "huber" and opt.defaults["delta"] == "adaptive"
    muon = with_decoupled_decay(torch.optim.Muon)(make_params([(2, 2)]))
    assert muon.defaults["weight_decay"] == 0.1  # Muon's own default


def test_params_without_grad_and_groups_without_decay_are_untouched():
    W = with_decoupled_decay(torch.optim.SGD)
    a, b, c = make_params([(3,), (3,), (3,)])
    opt = W([{"params": [a, b]}, {"params": [c], "weight_decay": 0.0}], lr=0.1, weight_decay=1.0)
    before = clone_params([a, b, c])
    a.grad = torch.zeros(3)
    c.grad = torch.zeros(3)
    opt.step()
    assert not torch.equal(a, before[0])  # decayed
    assert torch.equal(b, before[1]) and torch.equal(c, before[2])
    assert "delta_mu" not in opt.state.get(c, {}) and "delta_mu" not in opt.state.get(b, {})


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors, before anything changes
# ---------------------------------------------------------------------------------------------


class NoStep(torch.optim.Optimizer):
    def __init__(self, params):
        super().__init__(params, {"lr": 0.1})


class StaticStep(torch.optim.Optimizer):
    def __init__(self, params):
        super().__init__(params, {"lr": 0.1})

    @staticmethod
    def step(closure=None):
        return None


class ClosureRequired(torch.optim.SGD):
    def step(self, closure):  # noqa: D102
        return super().step(closure)


@pytest.mark.parametrize(
    "base, match",
    [
        (torch.nn.Linear, "torch.optim.Optimizer subclass"),
        (torch.optim.Adam([torch.zeros(1, requires_grad=True)]), "Optimizer subclass"),
        (NoStep, "step must be a plain method"),
        (StaticStep, "step must be a plain method"),
        (ClosureRequired, "without arguments"),
        (with_decoupled_decay(torch.optim.Adam), "already applies decoupled decay"),
    ],
    ids=["module", "instance", "no-step", "static-step", "closure-required", "wrapped"],
)
def test_bad_base_classes(base, match):
    with pytest.raises(TypeError, match=match):
        with_decoupled_decay(base)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(decay="cauchy"), "Invalid decay: 'cauchy'"),
        (dict(decay_scaling="schedule", lr=0.0), "initial_lr > 0"),
        (dict(decay_scaling="warmup"), "Invalid decay_scaling"),
        (dict(decay_form="implicit"), "Invalid decay_form"),
        (dict(delta=-1.0), "Invalid delta"),
        (dict(weight_decay=-0.1), "Invalid weight_decay"),
        (dict(cautious_decay="yes"), "Invalid cautious_decay"),
    ],
)
def test_bad_options_raise_before_anything_changes(kwargs, match):
    W = with_decoupled_decay(torch.optim.Adam)
    p = make_params([(3,)])[0]
    with pytest.raises(ValueError, match=match):
        W([p], **{"lr": 1e-2, **kwargs})
    opt = W([p], lr=1e-2)
    with pytest.raises(ValueError, match=match):
        opt.add_param_group({"params": make_params([(2,)]), **kwargs})
    assert len(opt.param_groups) == 1


def test_complex_parameters_and_differentiable_are_rejected_at_construction():
    W = with_decoupled_decay(torch.optim.Adam)
    z = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(ValueError, match="complex"):
        W([z])
    with pytest.raises(ValueError, match="complex"):
        W(p for p in [make_params([(2,)])[0], z])
    with pytest.raises(ValueError, match="differentiable"):
        W(make_params([(2,)]), differentiable=True)
    named = W([("w", make_params([(2,)])[0])])  # named parameters pass through to torch
    assert len(named.param_groups[0]["params"]) == 1


def test_schedule_with_unusable_initial_lr_raises_before_any_decay():
    W = with_decoupled_decay(torch.optim.SGD)
    a, b = make_params([(3,), (3,)])
    opt = W([{"params": [a]}, {"params": [b], "decay_scaling": "schedule"}], lr=0.1)
    opt.param_groups[1]["initial_lr"] = 0.0  # broken by hand
    set_grads([a, b], grads_for([a, b], 0))
    before = clone_params([a, b])
    with pytest.raises(ValueError, match="initial_lr"):
        opt.step()
    assert torch.equal(a, before[0]) and torch.equal(b, before[1]) and len(opt.state) == 0


def test_bad_base_arguments_name_the_class():
    with pytest.raises(TypeError, match="AdamWithDecoupledDecay.*unexpected"):
        with_decoupled_decay(torch.optim.Adam)(make_params([(2,)]), lr=1e-3, betaz=(0.9, 0.9))
    with pytest.raises(TypeError, match="multiple values"):
        with_decoupled_decay(torch.optim.Adam)(make_params([(2,)]), 1e-3, lr=1e-3)
    with pytest.raises(TypeError, match="multiple values for 'weight_decay'"):
        with_decoupled_decay(torch.optim.Adam)(
            make_params([(2,)]), 1e-3, (0.9, 0.999), 1e-8, 0.1, weight_decay=0.2
        )


def test_a_plain_adamw_checkpoint_loads_and_continues_bit_for_bit():
    """A checkpoint of torch's AdamW (its groups have no decay options) loads into
    with_decoupled_decay(AdamW): the groups keep this optimizer's decay options, and with
    decay="l2" the run continues as AdamW's own, bit for bit, weights and state."""
    torch.manual_seed(0)
    ours_ps = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
    ref_ps = [torch.nn.Parameter(p.detach().clone()) for p in ours_ps]
    ref = torch.optim.AdamW([{"params": ref_ps[:1]}, {"params": ref_ps[1:]}], lr=1e-2,
                            weight_decay=0.1)

    def step(opt, ps, k):
        for i, p in enumerate(ps):
            p.grad = torch.sin(torch.arange(p.numel(), dtype=p.dtype) + k + i).reshape(p.shape)
        opt.step()

    for k in range(2):
        step(ref, ref_ps, k)
    with torch.no_grad():
        for p, q in zip(ours_ps, ref_ps):
            p.copy_(q)
    ours = with_decoupled_decay(torch.optim.AdamW)(
        [{"params": ours_ps[:1]}, {"params": ours_ps[1:], "delta": 0.5}],
        lr=1e-2, weight_decay=0.1, decay="l2")
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))  # as from a file: no shared tensors
    assert [g["decay"] for g in ours.param_groups] == ["l2", "l2"]
    assert ours.param_groups[1]["delta"] == 0.5
    for k in range(2, 5):
        step(ref, ref_ps, k)
        step(ours, ours_ps, k)
    for p, q in zip(ours_ps, ref_ps):
        assert torch.equal(p, q)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(ours.state[p][key], ref.state[q][key])
