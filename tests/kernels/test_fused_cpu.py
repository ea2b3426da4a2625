"""The fused CPU kernel against the single-tensor reference path (numbers, no timings)."""

import math

import pytest
import torch

from adamhd import AdamHD, kernels
from adamhd.kernels import cpu
from tests.kernels.conftest import clone_params, grads_for, make_params

PATHS = {"single": dict(foreach=False, fused=False), "foreach": dict(foreach=True, fused=False),
         "fused": dict(fused=True)}


def train(ps, path, steps=25, seed=1, groups=None, **kw):
    opt = AdamHD(groups if groups is not None else ps, **PATHS[path], **kw)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p, g in zip(ps, grads_for(ps, gen)):
            p.grad = g.to(p.dtype)
        opt.step()
    return opt


def assert_states_close(opt_a, ps_a, opt_b, ps_b, rtol, atol):
    for a, b in zip(ps_a, ps_b):
        torch.testing.assert_close(a.detach().double(), b.detach().double(), rtol=rtol, atol=atol)
        sa, sb = opt_a.state[a], opt_b.state[b]
        assert set(sa) == set(sb)
        for key in sa:
            torch.testing.assert_close(sa[key].double(), sb[key].double(), rtol=rtol, atol=atol,
                                       msg=key)


CASES = [
    dict(),
    dict(decay_form="proximal"),
    dict(delta=0.4),
    dict(delta=0.4, decay_form="proximal", amsgrad=True),
    dict(delta=math.inf),
    dict(amsgrad=True, maximize=True),
    dict(decay_form="proximal", maximize=True, weight_decay=0.0),
    dict(betas=(0.3, 0.6), delta_beta=0.2, delta_scale=0.7),  # lerp's other branch
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())
                         or "default")
def test_fused_matches_reference(cpu_kernel, dtype, case):
    kw = {"lr": 1e-2, "weight_decay": 0.2, **case}
    ref_ps = make_params(dtype)
    ps = clone_params(ref_ps)
    ref = train(ref_ps, "single", **kw)
    opt = train(ps, "fused", **kw)
    assert set(opt.paths.values()) == {"fused"}
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    assert_states_close(opt, ps, ref, ref_ps, **tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", [dict(), dict(decay_form="proximal", delta=0.3, amsgrad=True)])
def test_fused_low_precision_computes_in_fp32(cpu_kernel, dtype, case):
    """bf16/fp16 params: fp32 math rounded once per step; compare with an fp32 run."""
    kw = {"lr": 1e-2, "weight_decay": 0.2, **case}
    ps = make_params(dtype, shapes=[(7,), (33, 17), (4000,)])
    ref_ps = clone_params(ps, torch.float32)
    opt = train(ps, "fused", steps=4, **kw)
    train(ref_ps, "single", steps=4, **kw)
    for a, b in zip(ps, ref_ps):
        assert a.dtype == dtype and opt.state[a]["exp_avg"].dtype == dtype
        torch.testing.assert_close(a.detach().float(), b.detach(), rtol=4e-2, atol=4e-2)
    # and the fused result is close to torch's fused AdamW where delta is infinite
    ps2 = make_params(dtype, shapes=[(33, 17)], transposed=False)
    ps3 = clone_params(ps2)
    train(ps2, "fused", steps=6, lr=1e-2, weight_decay=0.2, delta=math.inf)
    adamw = torch.optim.AdamW(ps3, lr=1e-2, weight_decay=0.2, fused=True)
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        ps3[0].grad = grads_for(ps3, gen)[0].to(dtype)
        adamw.step()
    diff = (ps2[0].detach().float() - ps3[0].detach().float()).abs()
    assert (diff > 0).float().mean() < 0.01 and diff.max() <= 2e-2


def test_large_tensor_and_threshold_statistic(cpu_kernel):
    """A tensor split over threads; mu follows mean|p| of the whole tensor."""
    ps = [torch.nn.Parameter(torch.randn(3_000_001) * 0.1)]
    ref_ps = clone_params(ps)
    opt = train(ps, "fused", steps=3, lr=1e-3, weight_decay=0.1)
    ref = train(ref_ps, "single", steps=3, lr=1e-3, weight_decay=0.1)
    torch.testing.assert_close(ps[0].detach(), ref_ps[0].detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(opt.state[ps[0]]["delta_mu"], ref.state[ref_ps[0]]["delta_mu"],
                               rtol=1e-6, atol=0)
    # the cached statistic is the mean of the p just written
    cached = cpu_kernel.cached_abs_sums([ps[0]])[0].item() / ps[0].numel()
    assert cached == pytest.approx(ps[0].detach().double().abs().mean().item(), rel=1e-6)


def test_mixed_param_groups(cpu_kernel):
    ps = make_params(torch.float32, shapes=[(7,), (33, 17), (100,), (5, 5)], transposed=False)
    ps64 = [torch.nn.Parameter(torch.randn(11, dtype=torch.float64))]
    all_ps = ps + ps64

    def groups(qs):
        return [
            dict(params=qs[:2]),
            dict(params=qs[2:3], weight_decay=0.0),
            dict(params=qs[3:4], delta=0.1, decay_form="proximal", amsgrad=True, lr=3e-3),
            dict(params=qs[4:], delta_scale=0.5),
        ]

    ref_ps = clone_params(all_ps)
    opt = train(all_ps, "fused", groups=groups(all_ps), lr=1e-2, weight_decay=0.3)
    ref = train(ref_ps, "single", groups=groups(ref_ps), lr=1e-2, weight_decay=0.3)
    assert_states_close(opt, all_ps, ref, ref_ps, rtol=2e-5, atol=2e-6)
    assert "delta_mu" in opt.state[all_ps[2]] and opt.state[all_ps[2]]["delta_mu"].item() == (
        pytest.approx(ref.state[ref_ps[2]]["delta_mu"].item()))


def _snapshot(opt, ps):
    out = [p.detach().clone() for p in ps]
    for p in ps:
        out += [v.clone() for v in opt.state[p].values()]
    return out


def test_grad_scale_and_found_inf(cpu_kernel):
    ps = make_params(torch.float32, shapes=[(33, 17), (100,)], transposed=False)
    ref_ps = clone_params(ps)
    opt = AdamHD(ps, lr=1e-2, weight_decay=0.2, fused=True)
    ref = AdamHD(ref_ps, lr=1e-2, weight_decay=0.2, foreach=False)
    assert opt._step_supports_amp_scaling
    gen = torch.Generator().manual_seed(3)
    for step in range(8):
        grads = grads_for(ps, gen)
        for p, q, g in zip(ps, ref_ps, grads):
            p.grad = (g * 1024).float()
            q.grad = g.float()
        skip = step in (2, 5)
        opt.grad_scale = torch.tensor(1024.0)
        opt.found_inf = torch.tensor(1.0 if skip else 0.0)
        before = _snapshot(opt, ps) if step > 0 else None
        cached = cpu_kernel.cached_abs_sums(ps) if step > 0 else None
        opt.step()
        if skip:
            after = _snapshot(opt, ps)
            assert all(torch.equal(x, y) for x, y in zip(before, after))  # nothing changed
            assert torch.equal(cpu_kernel.cached_abs_sums(ps), cached)
            for p, g in zip(ps, grads):  # gradients left as they were: still scaled
                assert torch.equal(p.grad, (g * 1024).float())
        else:
            ref.step()
            for p, g in zip(ps, grads):  # unscaled in place, in the same pass
                assert torch.equal(p.grad, (g * 1024).float() / 1024)
    del opt.grad_scale, opt.found_inf
    for p, q in zip(ps, ref_ps):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=2e-5, atol=2e-6)
        assert opt.state[p]["step"].item() == ref.state[q]["step"].item() == 6


def test_real_grad_scaler(cpu_kernel):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    opt = AdamHD(model.parameters(), lr=1e-2, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for _ in range(3):
        loss = model(torch.randn(16, 8)).pow(2).mean()
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert opt.state[model.weight]["step"].item() == 3


@pytest.mark.parametrize("edit", ["scale", "prune", "load", "data"])
def test_version_guard_recomputes_mean(cpu_kernel, edit):
    """Changing p between steps: the threshold uses the fresh mean|p|, as the reference does."""
    ps = make_params(torch.float32, shapes=[(40, 30), (500,)], transposed=False)
    ref_ps = clone_params(ps)
    opt = train(ps, "fused", steps=3, lr=1e-2, weight_decay=0.2)
    ref = train(ref_ps, "single", steps=3, lr=1e-2, weight_decay=0.2)
    new = torch.randn(40, 30)
    for qs in (ps, ref_ps):
        with torch.no_grad():
            if edit == "scale":
                qs[0].mul_(3.0)
            elif edit == "prune":
                qs[0][qs[0].abs() < 0.5] = 0.0
            elif edit == "load":
                torch.nn.Module.load_state_dict(
                    torch.nn.ParameterList([qs[0]]), {"0": new}, strict=True)
            else:
                qs[0].data.mul_(3.0)  # invisible to _version: the user must say so
                if qs is ps:
                    kernels.forget_abs_means([qs[0]])
    mu_before = opt.state[ps[0]]["delta_mu"].clone()
    fresh = ps[0].detach().abs().mean()
    gen = torch.Generator().manual_seed(9)
    for o, qs in ((opt, ps), (ref, ref_ps)):
        gen.manual_seed(9)
        for p, g in zip(qs, grads_for(qs, gen)):
            p.grad = g.float()
        o.step()
    expected = torch.lerp(mu_before, fresh, 0.01)
    torch.testing.assert_close(opt.state[ps[0]]["delta_mu"], expected, rtol=1e-6, atol=0)
    for a, b in zip(ps, ref_ps):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=2e-5, atol=2e-6)


def test_resume_mid_run_is_bit_exact(cpu_kernel, tmp_path):
    kw = dict(lr=1e-2, weight_decay=0.2)
    straight = make_params(torch.float32, shapes=[(33, 17), (100,)], transposed=False)
    first = clone_params(straight)
    train(straight, "fused", steps=12, **kw)

    opt1 = train(first, "fused", steps=6, **kw)
    torch.save({"p": [p.detach() for p in first], "opt": opt1.state_dict()}, tmp_path / "c.pt")
    ckpt = torch.load(tmp_path / "c.pt", weights_only=True)
    resumed = [torch.nn.Parameter(p.clone()) for p in ckpt["p"]]
    opt2 = AdamHD(resumed, fused=True, **kw)
    opt2.load_state_dict(ckpt["opt"])
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        grads_for(resumed, gen)  # skip the first 6 steps' gradients
    for _ in range(6):
        for p, g in zip(resumed, grads_for(resumed, gen)):
            p.grad = g.float()
        opt2.step()
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


def test_fused_true_errors(cpu_kernel):
    with pytest.raises(RuntimeError, match="differentiable"):
        AdamHD([torch.nn.Parameter(torch.randn(3))], fused=True, differentiable=True)
    with pytest.raises(RuntimeError, match="foreach"):
        AdamHD([torch.nn.Parameter(torch.randn(3))], fused=True, foreach=True)
    with pytest.raises(RuntimeError, match="fused=True cannot be honoured"):
        AdamHD([torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))], fused=True)
    assert kernels.fused_unsupported_reason(torch.zeros(2, device="meta")) is not None


def test_no_compiler_is_clear_and_fused_none_falls_back(cpu_kernel, monkeypatch):
    message = "the fused CPU kernel needs a C++ compiler (test)"
    cpu._reset_for_tests(error=message)
    try:
        with pytest.raises(RuntimeError, match=r"needs a C\+\+ compiler \(test\)"):
            AdamHD([torch.nn.Parameter(torch.randn(3))], fused=True)
        p = torch.nn.Parameter(torch.randn(3))
        opt = AdamHD([p])
        p.grad = torch.ones(3)
        opt.step()
        assert opt.paths[0] in ("single", "foreach")
    finally:
        cpu._reset_for_tests()
    assert cpu.load() is not None


def test_fused_is_the_cpu_default_with_an_opt_out(cpu_kernel, monkeypatch):
    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.ones(3)
    opt = AdamHD([p])
    opt.step()
    assert opt.paths[0] == "fused"  # the fastest verified path
    monkeypatch.setenv("ADAMHD_FUSED_DEFAULT", "0")
    opt = AdamHD([p])
    opt.step()
    assert opt.paths[0] == "single"  # torch's CPU convention


def test_build_failure_message(monkeypatch):
    monkeypatch.setenv("ADAMHD_NO_EXTENSION", "1")
    cpu._reset_for_tests()
    try:
        assert cpu.load() is None
        assert "ADAMHD_NO_EXTENSION" in cpu.build_error()
    finally:
        monkeypatch.delenv("ADAMHD_NO_EXTENSION")
        cpu._reset_for_tests()
