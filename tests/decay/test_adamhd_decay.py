"""AdamHD's decay options (decay, cautious_decay, decay_scaling) on the single and foreach paths."""

import math

import pytest
import torch

from adamhd import AdamHD, kernels
from tests.decay.reference import ReferenceAdamDecay

F64 = torch.float64
PATHS = {"single": dict(foreach=False, fused=False), "foreach": dict(foreach=True, fused=False)}

CASES = [
    dict(decay="l2", cautious_decay=True),  # cautious AdamW, arXiv 2510.12402
    dict(decay="l2", cautious_decay=True, decay_form="proximal"),
    dict(cautious_decay=True),  # adaptive Huber
    dict(cautious_decay=True, delta=0.05, decay_form="proximal"),
    dict(cautious_decay=True, delta_scale=0.5, decay_scaling="schedule"),
    dict(decay="l2", decay_scaling="schedule"),
    dict(delta=0.05, decay_scaling="schedule", decay_form="proximal"),
]


def lr_at(step: int) -> float:
    return 0.05 * (0.3 + 0.7 * math.cos(step / 3))  # changes every step; below 0 at steps 7-12


def grads(shape, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=F64) for _ in range(steps)]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_adamhd_matches_float64_reference(path, case):
    steps = 8
    shapes = [(6, 5), (13,)]
    params = [torch.randn(s, generator=torch.Generator().manual_seed(i), dtype=F64) * 0.1
              for i, s in enumerate(shapes)]
    refs = [ReferenceAdamDecay(p, weight_decay=0.5, initial_lr=0.05, **case) for p in params]
    ps = [p.clone().requires_grad_() for p in params]
    opt = AdamHD(ps, lr=0.05, weight_decay=0.5, **case, **PATHS[path])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: lr_at(t) / 0.05)
    gs = [grads(s, steps, seed=10 + i) for i, s in enumerate(shapes)]
    for t in range(steps):
        lr = opt.param_groups[0]["lr"]
        assert lr == pytest.approx(lr_at(t))
        for p, ref, g in zip(ps, refs, gs):
            p.grad = g[t].clone()
            ref.step(g[t], lr)
        opt.step()
        sched.step()
    assert opt.paths[0] == path
    for p, ref in zip(ps, refs):
        torch.testing.assert_close(p.detach(), ref.p, rtol=1e-12, atol=1e-14)
        if ref.decay == "huber" and ref.delta == "adaptive":
            assert opt.state[p]["delta_mu"].item() == pytest.approx(ref.mu, rel=1e-12)


def test_reference_cautious_mask_changes_the_result():
    """Guard: the cases above would fail if cautious_decay were ignored."""
    p0 = torch.randn(40, generator=torch.Generator().manual_seed(0), dtype=F64)
    a = ReferenceAdamDecay(p0, weight_decay=0.5, cautious_decay=True)
    b = ReferenceAdamDecay(p0, weight_decay=0.5)
    for g in grads((40,), 5):
        a.step(g, 0.05)
        b.step(g, 0.05)
    assert (a.p - b.p).abs().max() > 1e-3


@pytest.mark.parametrize("path", PATHS)
def test_l2_is_torch_adamw_bit_for_bit(path):
    p = torch.randn(7, 9, generator=torch.Generator().manual_seed(1))
    a, b = p.clone().requires_grad_(), p.clone().requires_grad_()
    ours = AdamHD([a], lr=0.01, weight_decay=0.3, decay="l2", **PATHS[path])
    adamw = torch.optim.AdamW([b], lr=0.01, weight_decay=0.3, foreach=path == "foreach")
    for g in grads((7, 9), 5):
        a.grad, b.grad = g.float(), g.float()
        ours.step()
        adamw.step()
    assert torch.equal(a, b)
    assert torch.equal(ours.state[a]["exp_avg_sq"], adamw.state[b]["exp_avg_sq"])
    assert "delta_mu" not in ours.state[a]  # L2 keeps no threshold statistic


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("form", ["explicit", "proximal"])
def test_l2_equals_infinite_delta_with_cautious_decay(path, form):
    p = torch.randn(50, generator=torch.Generator().manual_seed(2))
    a, b = p.clone().requires_grad_(), p.clone().requires_grad_()
    kw = dict(lr=0.02, weight_decay=0.4, cautious_decay=True, decay_form=form, **PATHS[path])
    opt_a = AdamHD([a], decay="l2", **kw)
    opt_b = AdamHD([b], delta=math.inf, **kw)
    for g in grads((50,), 4):
        a.grad, b.grad = g.float(), g.float()
        opt_a.step()
        opt_b.step()
    assert torch.equal(a, b)


@pytest.mark.parametrize("scaling", ["lr", "schedule"])
def test_decay_scaling_with_zero_gradients_is_the_closed_form(scaling):
    """Zero gradients: Adam's update is 0, so p_T = p_0 * prod(1 - tau_t) (L2)."""
    p0 = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    p = p0.clone().requires_grad_()
    opt = AdamHD([p], lr=0.1, weight_decay=0.2, decay="l2", decay_scaling=scaling, foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5**t)
    factor = 1.0
    for t in range(4):
        p.grad = torch.zeros_like(p)
        lr = 0.1 * 0.5**t
        factor *= 1 - (lr * 0.2 if scaling == "lr" else lr / 0.1 * 0.2)
        opt.step()
        sched.step()
    torch.testing.assert_close(p.detach(), p0 * factor, rtol=1e-15, atol=0)
    assert opt.param_groups[0]["initial_lr"] == 0.1


def test_schedule_initial_lr_is_the_construction_lr_and_a_scheduler_keeps_it():
    p = torch.zeros(2, requires_grad=True)
    opt = AdamHD([p], lr=0.3, decay_scaling="schedule")
    assert opt.param_groups[0]["initial_lr"] == 0.3
    opt.param_groups[0]["lr"] = 0.6  # changed by hand before the scheduler exists
    torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    assert opt.param_groups[0]["initial_lr"] == 0.3
    plain = AdamHD([torch.zeros(2, requires_grad=True)], lr=0.3)
    assert "initial_lr" not in plain.param_groups[0]  # "lr" scaling adds no key


def test_an_option_the_kernels_lack_and_the_fused_path(monkeypatch):
    """fused=True with an option the kernels lack (trust_ratio, taken out of the kernel table
    here: the CPU kernel runs it, tests/kernels) raises; fused=None takes another path for that
    group only (cautious_decay itself is in the kernels: tests/kernels).

    The kernels are replaced by a recorder (this tests the choice, not the kernels, and needs no
    kernel build)."""
    monkeypatch.setitem(kernels.spec.UPDATE_OPTIONS, "cpu", ())
    p = torch.randn(8, requires_grad=True)
    with pytest.raises(RuntimeError, match="trust_ratio"):
        AdamHD([p], trust_ratio=True, fused=True)
    calls = []
    monkeypatch.setattr(kernels, "fused_unsupported_reason", lambda p: None)
    monkeypatch.setattr(kernels, "fused_is_default", lambda params: True)
    monkeypatch.setattr(kernels, "fused_adamhd", lambda params, *a, **k: calls.append(params))
    opt = AdamHD([p], fused=True)
    with pytest.raises(RuntimeError, match="trust_ratio"):
        opt.add_param_group({"params": [torch.randn(3, requires_grad=True)],
                             "trust_ratio": True})
    assert len(opt.param_groups) == 1
    q, r = torch.randn(8, requires_grad=True), torch.randn(8, requires_grad=True)
    opt = AdamHD([{"params": [q], "trust_ratio": True}, {"params": [r]}])
    q.grad, r.grad = torch.randn(8), torch.randn(8)
    q0 = q.detach().clone()
    opt.step()
    assert opt.paths[0] in ("single", "foreach") and opt.paths[1] == "fused"
    assert len(calls) == 1 and calls[0][0] is r
    assert not torch.equal(q, q0)


@pytest.mark.parametrize("path", PATHS)
def test_state_dict_round_trip_keeps_the_new_options(path):
    def make(ps):
        groups = [
            {"params": ps[:1], "decay": "l2", "cautious_decay": True,
             "decay_scaling": "schedule"},
            {"params": ps[1:], "cautious_decay": True, "decay_form": "proximal"},
        ]
        return AdamHD(groups, lr=0.05, weight_decay=0.4, **PATHS[path])

    p0 = [torch.randn(5, 4, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    gs = grads((5, 4), 6)
    full = [p.clone().requires_grad_() for p in p0]
    opt = make(full)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.7)
    for g in gs:
        for p in full:
            p.grad = g.float()
        opt.step()
        sched.step()

    part = [p.clone().requires_grad_() for p in p0]
    opt1 = make(part)
    sched1 = torch.optim.lr_scheduler.StepLR(opt1, 1, gamma=0.7)
    for g in gs[:3]:
        for p in part:
            p.grad = g.float()
        opt1.step()
        sched1.step()
    saved, saved_sched = opt1.state_dict(), sched1.state_dict()
    # constructed with the default options: the loaded groups bring theirs
    opt2 = AdamHD([{"params": part[:1]}, {"params": part[1:]}], lr=0.05, weight_decay=0.4,
                  **PATHS[path])
    opt2.load_state_dict(saved)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, 1, gamma=0.7)
    sched2.load_state_dict(saved_sched)
    assert [g["decay"] for g in opt2.param_groups] == ["l2", "huber"]
    assert [g["cautious_decay"] for g in opt2.param_groups] == [True, True]
    assert opt2.param_groups[0]["decay_scaling"] == "schedule"
    assert opt2.param_groups[0]["initial_lr"] == 0.05
    for g in gs[3:]:
        for p in part:
            p.grad = g.float()
        opt2.step()
        sched2.step()
    for a, b in zip(full, part):
        assert torch.equal(a, b)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[a][key], opt2.state[b][key])
    assert torch.equal(opt.state[full[1]]["delta_mu"], opt2.state[part[1]]["delta_mu"])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(decay="lasso"), "decay"),
        (dict(decay=None), "decay"),
        (dict(cautious_decay="yes"), "cautious_decay"),
        (dict(cautious_decay=1), "cautious_decay"),
        (dict(decay_scaling="epoch"), "decay_scaling"),
        (dict(decay_scaling="schedule", lr=0.0), "lr=0.0"),
    ],
)
def test_bad_decay_options_raise_naming_the_key(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AdamHD([torch.zeros(2, requires_grad=True)], **kwargs)
    opt = AdamHD([torch.zeros(2, requires_grad=True)])
    with pytest.raises(ValueError, match=name):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], **kwargs})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("path", PATHS)
def test_unusable_initial_lr_at_step_raises_before_anything_changes(path):
    a, b = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = AdamHD([{"params": [a]}, {"params": [b], "decay_scaling": "schedule"}], lr=0.1,
                 **PATHS[path])
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    opt.step()
    before = [a.detach().clone(), b.detach().clone(),
              *[t.clone() for t in opt.state[a].values()]]
    for bad in (0.0, math.nan, None):
        if bad is None:
            del opt.param_groups[1]["initial_lr"]
        else:
            opt.param_groups[1]["initial_lr"] = bad
        with pytest.raises(ValueError, match="initial_lr"):
            opt.step()
        after = [a.detach(), b.detach(), *opt.state[a].values()]
        assert all(torch.equal(x, y) for x, y in zip(before, after))


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("form", ["explicit", "proximal"])
def test_cautious_decay_with_capturable_tensor_math(foreach, form):
    """capturable=True: lr and tau are tensors, the decay goes through the per-tensor route."""
    p0 = torch.randn(30, generator=torch.Generator().manual_seed(5), dtype=F64)
    p = p0.clone().requires_grad_()
    ref = ReferenceAdamDecay(p0, weight_decay=0.5, decay_form=form, cautious_decay=True,
                             decay_scaling="schedule", initial_lr=0.04)
    opt = AdamHD([p], lr=torch.tensor(0.04, dtype=F64), weight_decay=0.5, decay_form=form,
                 cautious_decay=True, decay_scaling="schedule", capturable=True, foreach=foreach)
    for g in grads((30,), 6, seed=6):
        p.grad = g.clone()
        ref.step(g, 0.04)
        opt.step()
    # float32 step counts in the capturable bias corrections, as in torch: ~5e-6 relative
    torch.testing.assert_close(p.detach(), ref.p, rtol=1e-5, atol=1e-6)


def test_cautious_decay_is_differentiable():
    """differentiable=True: the step is part of the autograd graph, the mask is not."""
    w = torch.tensor([0.5, -1.0, 2.0], dtype=F64, requires_grad=True)
    p = w.clone()
    p.retain_grad()
    opt = AdamHD([p], lr=0.1, weight_decay=0.5, delta=1.0, cautious_decay=True,
                 differentiable=True)
    p.grad = torch.tensor([1.0, 1.0, -1.0], dtype=F64)
    opt.step()
    p.sum().backward()
    # u = sign(g) at step 1 (m_hat/sqrt(v_hat)); decayed where u*p >= 0: elements 0 and 2
    tau = 0.05
    assert torch.allclose(w.grad, torch.tensor([1 - tau, 1.0, 1.0], dtype=F64))
