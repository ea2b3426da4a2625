"""Stable Weight Decay (``decay_scaling="stable"``, arXiv 2011.11152) and CPR (``decay="cpr"``,
arXiv 2311.09058) on ``with_decoupled_decay``: float64 references written here from the papers'
formulas, state after a skipped step and after a ``state_dict`` round trip, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from adamhd import with_decoupled_decay

F64 = torch.float64
ADAM = with_decoupled_decay(torch.optim.Adam)
SHAPES = [(6, 5), (5,), (4, 3)]


def make_params(dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in SHAPES]


def grads(step, dtype=F64, bias=0.0):
    g = torch.Generator().manual_seed(100 + step)
    return [(torch.randn(s, generator=g, dtype=F64) + bias).to(dtype) for s in SHAPES]


def groups(ps, **second):
    """Two groups: the first decays, the second (one tensor) as given (weight_decay 0 default)."""
    return [{"params": ps[:2]}, {"params": ps[2:], "weight_decay": 0.0, **second}]


def run(opt, params, steps, start=0, bias=0.0):
    for t in range(start, start + steps):
        for p, g in zip(params, grads(t, params[0].dtype, bias)):
            p.grad = g
        opt.step()


# ---------------------------------------------------------------------------------------------
# Stable Weight Decay: AdamS's Algorithm 2, in float64
# ---------------------------------------------------------------------------------------------


def adams64(steps, lr, wds, betas=(0.9, 0.999), eps=1e-8, cautious=False):
    """AdamS (arXiv 2011.11152, Algorithm 2): Adam; vbar = mean of v_hat_t over every element of
    every parameter; p_t = p_{t-1} - lr*m_hat/(sqrt(v_hat)+eps) - lr*wd/sqrt(vbar)*p_{t-1}, the
    decay where u*p_{t-1} >= 0 only if cautious. (+eps in the decay's denominator: our choice.)"""
    ps = [p.detach().clone() for p in make_params()]
    ms = [torch.zeros_like(p) for p in ps]
    vs = [torch.zeros_like(p) for p in ps]
    b1, b2 = betas
    for t in range(1, steps + 1):
        gs = grads(t - 1)
        for m, v, g in zip(ms, vs, gs):
            m.mul_(b1).add_((1 - b1) * g)
            v.mul_(b2).add_((1 - b2) * g * g)
        v_hats = [v / (1 - b2**t) for v in vs]
        vbar = sum(float(vh.sum()) for vh in v_hats) / sum(p.numel() for p in ps)
        for i, p in enumerate(ps):
            u = (ms[i] / (1 - b1**t)) / (v_hats[i].sqrt() + eps)
            decay = lr * wds[i] / (math.sqrt(vbar) + eps) * p
            if cautious:
                decay = decay * (u * p >= 0)
            ps[i] = p - lr * u - decay
    return ps


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("cautious", [False, True])
def test_stable_decay_is_adams(foreach, cautious):
    params = make_params()
    opt = ADAM(groups(params), lr=2e-2, weight_decay=3e-3, decay="l2", decay_scaling="stable",
               cautious_decay=cautious, foreach=foreach)
    run(opt, params, 5)
    want = adams64(5, 2e-2, [3e-3, 3e-3, 0.0], cautious=cautious)
    for p, w in zip(params, want):
        torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-14)


def test_stable_decay_strength_is_not_adamw():
    """Not vacuous: the stable strength differs from lr*wd by 1/sqrt(vbar) (gradients ~ 10)."""
    params, plain = make_params(), make_params()
    kw = dict(lr=1e-2, weight_decay=1e-2, decay="l2")
    stable = ADAM(groups(params), decay_scaling="stable", **kw)
    adamw = ADAM(groups(plain), **kw)
    run(stable, params, 1, bias=10.0)
    run(adamw, plain, 1, bias=10.0)
    assert not torch.allclose(params[0], plain[0], rtol=0, atol=1e-9)


def test_stable_decay_round_trip_is_bit_exact():
    def make():
        ps = make_params(torch.float32)
        return ps, ADAM(groups(ps), lr=1e-2, weight_decay=1e-3, decay_scaling="stable")

    straight, opt = make()
    run(opt, straight, 4)
    half, opt = make()
    run(opt, half, 2)
    saved = copy.deepcopy(opt.state_dict())
    resumed, opt2 = make()
    with torch.no_grad():
        for r, h in zip(resumed, half):
            r.copy_(h)
    opt2.load_state_dict(saved)
    run(opt2, resumed, 2, start=2)
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


def test_stable_decay_reads_unscaled_gradients_under_grad_scaler():
    """Fused Adam unscales inside its step: the wrapper's vbar must not see the loss scale."""
    plain, scaled = make_params(torch.float32), make_params(torch.float32)
    kw = dict(lr=1e-2, weight_decay=1e-3, decay="l2", decay_scaling="stable")
    opt_plain = ADAM(groups(plain), foreach=True, **kw)
    opt_scaled = ADAM(groups(scaled), fused=True, **kw)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for t in range(3):
        for p, g in zip(plain, grads(t, torch.float32)):
            p.grad = g
        opt_plain.step()
        opt_scaled.zero_grad()
        loss = sum((p * g).sum() for p, g in zip(scaled, grads(t, torch.float32)))
        scaler.scale(loss).backward()
        scaler.step(opt_scaled)
        scaler.update()
    assert opt_scaled.param_groups[0]["fused"]  # GradScaler left the unscaling to the step
    for a, b in zip(plain, scaled):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("base", [torch.optim.SGD, torch.optim.Adagrad, torch.optim.Adamax])
def test_stable_decay_refuses_bases_without_adams_v(base):
    with pytest.raises(ValueError, match="v_hat"):
        with_decoupled_decay(base)(make_params(), lr=0.1, decay_scaling="stable")


def test_stable_decay_refuses_amsgrad_and_cpr():
    with pytest.raises(ValueError, match="amsgrad"):
        ADAM(make_params(), lr=0.1, decay_scaling="stable", amsgrad=True)
    with pytest.raises(ValueError, match="cpr"):
        ADAM(make_params(), lr=0.1, decay="cpr", decay_scaling="stable")
    opt = ADAM(make_params(), lr=0.1)
    with pytest.raises(ValueError, match="decay_scaling"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)],
                             "decay_scaling": "nope"})
    assert len(opt.param_groups) == 1


# ---------------------------------------------------------------------------------------------
# CPR: Algorithm 1 with R = ||p||^2 (the paper's L2 form), in float64
# ---------------------------------------------------------------------------------------------


def cpr64(steps, lr, mu, init, kappa_param, cautious=False):
    """SGD (no decay) then, per tensor of the first group, CPR as the paper writes it:
    R(p) = ||p||^2, c = R - kappa_sum, lam <- max(0, lam + (mu/n)*c), p <- p - lam * 2p (where
    u*p_t >= 0 if cautious). kappa_sum: warm start n*mean(p^2) after step k, uniform n*kappa,
    dependent kappa_param*||p_0||^2."""
    ps = [p.detach().clone() for p in make_params()]
    n_decayed = 2
    lams = [0.0] * n_decayed
    if init == "warm_start":
        kappas = [math.inf] * n_decayed
    elif init == "uniform":
        kappas = [kappa_param * p.numel() for p in ps[:n_decayed]]
    else:
        kappas = [kappa_param * float((p * p).sum()) for p in ps[:n_decayed]]
    for t in range(steps):
        gs = grads(t)
        before = [p.clone() for p in ps]
        ps = [p - lr * g for p, g in zip(ps, gs)]
        for i in range(n_decayed):
            n = ps[i].numel()
            lams[i] = max(0.0, lams[i] + (mu / n) * (float((ps[i] ** 2).sum()) - kappas[i]))
            pull = lams[i] * 2 * ps[i]
            if cautious:
                pull = pull * ((before[i] - ps[i]) * before[i] >= 0)
            ps[i] = ps[i] - pull
            if init == "warm_start" and t == kappa_param:
                kappas[i] = float((ps[i] ** 2).sum())
    return ps, lams, [k / p.numel() for k, p in zip(kappas, ps)]


CPR_CASES = {
    "warm_start": dict(cpr_kappa_init="warm_start", cpr_kappa_param=1),
    "warm_start_at_0": dict(cpr_kappa_init="warm_start", cpr_kappa_param=0),
    "uniform": dict(cpr_kappa_init="uniform", cpr_kappa_param=0.5),
    "dependent_cautious": dict(cpr_kappa_init="dependent", cpr_kappa_param=1.05,
                               cautious_decay=True),
}


@pytest.mark.parametrize("case", list(CPR_CASES))
def test_cpr_is_the_papers_algorithm(case):
    options = CPR_CASES[case]
    params = make_params()
    sgd = with_decoupled_decay(torch.optim.SGD)
    opt = sgd(groups(params), lr=0.3, weight_decay=1.0, decay="cpr", cpr_mu=0.5, **options)
    run(opt, params, 6)
    want, lams, kappas = cpr64(6, 0.3, 0.5, options["cpr_kappa_init"],
                               options["cpr_kappa_param"], options.get("cautious_decay", False))
    for p, w in zip(params, want):
        torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-14)
    for p, lam, kappa in zip(params, lams, kappas):
        state = opt.state[p]
        assert float(state["cpr_lambda"]) == pytest.approx(lam, rel=1e-12, abs=1e-15)
        assert float(state["cpr_kappa"]) == pytest.approx(kappa, rel=1e-12)
        assert float(state["cpr_step"]) == 6
    assert max(lams) > 0  # the constraint was active: the test can fail
    assert "cpr_lambda" not in opt.state[params[2]]  # weight_decay=0: exempt


def test_cpr_state_round_trip_skipped_step_and_dtypes():
    def make():
        ps = make_params(torch.bfloat16)
        return ps, ADAM(groups(ps), lr=5e-2, weight_decay=1.0, decay="cpr",
                        cpr_kappa_init="uniform", cpr_kappa_param=0.5, cpr_mu=0.05)

    straight, opt = make()
    run(opt, straight, 5)
    half, opt = make()
    run(opt, half, 3)
    saved = copy.deepcopy(opt.state_dict())
    resumed, opt2 = make()
    with torch.no_grad():
        for r, h in zip(resumed, half):
            r.copy_(h)
    opt2.load_state_dict(saved)
    for key in ("cpr_lambda", "cpr_kappa", "cpr_step"):
        assert opt2.state[resumed[0]][key].dtype == torch.float32, key
        assert torch.equal(opt2.state[resumed[0]][key], opt.state[half[0]][key]), key
    run(opt2, resumed, 2, start=3)
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)
    assert float(opt2.state[resumed[0]]["cpr_lambda"]) > 0


def test_cpr_state_unchanged_by_a_skipped_step():
    params = make_params(torch.float32)
    opt = ADAM(groups(params), lr=5e-2, weight_decay=1.0, decay="cpr", cpr_kappa_param=0,
               fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)

    def scaled_step(bad):
        opt.zero_grad()
        loss = sum((p * g).sum() for p, g in zip(params, grads(0, torch.float32)))
        if bad:
            loss = loss * math.inf
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    scaled_step(False)
    state = copy.deepcopy(opt.state[params[0]])
    weights = [p.detach().clone() for p in params]
    scaled_step(True)
    for key, value in state.items():
        assert torch.equal(opt.state[params[0]][key], value), key
    assert all(torch.equal(p, w) for p, w in zip(params, weights))


@pytest.mark.parametrize("options, match", [
    (dict(cpr_mu=0.0), "cpr_mu"),
    (dict(cpr_mu=math.inf), "cpr_mu"),
    (dict(cpr_kappa_init="median"), "cpr_kappa_init"),
    (dict(cpr_kappa_param=2.5), "cpr_kappa_param"),
    (dict(cpr_kappa_param=-1), "cpr_kappa_param"),
    (dict(cpr_kappa_init="uniform", cpr_kappa_param=0.0), "cpr_kappa_param"),
    (dict(decay="cprx"), "decay"),
])
def test_cpr_bad_options_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        ADAM(make_params(), lr=0.1, **{"decay": "cpr", **options})
