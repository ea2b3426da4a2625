"""Run by test_triton_lowbit.py in a subprocess with TRITON_INTERPRET=1 (set before import).

The low-bit Triton kernel on CPU tensors (Triton's interpreter) against the reference path (the
single-tensor working-copy step of ``adamhd.optim.adamhd.lowbit``) on identical optimizers: the
Triton one has its low-bit step routed to ``triton_lowbit.lowbit_step``. Prints JSON figures.
"""

import copy
import json
import sys

import torch
from torch import nn

from adamhd import AdamHD
from adamhd.kernels import triton_lowbit
from adamhd.optim.adamhd import lowbit
from adamhd.optim.adamhd.step import AdamStep

SHAPES = [(700,), (3, 300), (5,), (0,), (2, 600)]  # partial blocks, a small (float32) tensor
MIN_8BIT = 512
_reference_step = lowbit.step_lowbit
_amp = {}  # grad_scale / found_inf handed to the Triton step


def on_triton(tensors, hyper, group, states, positions, foreach):
    triton_lowbit.lowbit_step(tensors, hyper, group, states, positions, **_amp)


def make(dtype, options, seed=0, triton=False):
    g = torch.Generator().manual_seed(seed)
    ps = [nn.Parameter((torch.randn(s, generator=g) * 0.2).to(dtype)) for s in SHAPES]
    return ps, AdamHD(ps, foreach=False, **options), triton


def grads(ps, t):
    g = torch.Generator().manual_seed(100 + t)
    out = []
    for p in ps:
        x = torch.randn(p.shape, generator=g) * torch.exp(torch.randn(p.shape, generator=g) * 2)
        out.append((x * 1e-3).to(p.dtype))
    return out


def step(run, t, scale=1.0):
    ps, opt, triton = run
    for p, grad in zip(ps, grads(ps, t)):
        p.grad = grad * scale
    lowbit.step_lowbit = on_triton if triton else _reference_step
    try:
        opt.step()
    finally:
        lowbit.step_lowbit = _reference_step


def decoded(state, key):
    return lowbit.decode_moment(state, key, None, torch.float64)


def compare(a, b):
    """Weights: float32 ones, the largest ``|a - b| / (1e-5 |b| + 1e-6)`` (below 1: allclose);
    16-bit ones, whether all are within two units of their last place (the float32 values
    differ by rounding, mostly the bias corrections taken in float32 as the fp32 Triton kernel
    does) and the fraction equal.
    Moments: whether every decoded value is within one code step of the reference (m: 2**-3,
    sqrt(v): 2**-4, so v: 2**-3 + 2**-8; bf16: 2**-7; full precision: rtol 1e-5) and the
    fraction of low-bit elements stored equal; the int8 scales' largest relative difference."""
    (ps, opt, _), (qs, ref, _) = a, b
    out = {"weight_tol_used": 0.0, "weight_within_ulp": True, "weight_equal": [0, 0],
           "within_one_step": True, "equal": [0, 0], "scale_rel": 0.0, "steps_equal": True,
           "mu_rel": 0.0}
    for p, q in zip(ps, qs):
        if p.numel() == 0:
            continue
        x, y = p.detach().double(), q.detach().double()
        if p.dtype == torch.float32:
            rel = ((x - y).abs() / (1e-5 * y.abs() + 1e-6)).max().item()
            out["weight_tol_used"] = max(out["weight_tol_used"], rel)
        else:
            info = torch.finfo(p.dtype)  # 2 units in the last place (subnormals: their step)
            ulps = 2 * (info.eps * torch.maximum(x.abs(), y.abs()) + info.eps * info.tiny)
            out["weight_within_ulp"] &= bool(((x - y).abs() <= ulps).all())
            out["weight_equal"][0] += int((p == q).sum())
            out["weight_equal"][1] += p.numel()
        s, r = opt.state[p], ref.state[q]
        out["steps_equal"] &= bool(torch.equal(s["step"], r["step"]))
        if "delta_mu" in s:
            mu = abs(s["delta_mu"].item() - r["delta_mu"].item()) / abs(r["delta_mu"].item())
            out["mu_rel"] = max(out["mu_rel"], mu)
        for key, tol in (("exp_avg", 2.0**-3), ("exp_avg_sq", 2.0**-3 + 2.0**-8)):
            assert s[key].dtype == r[key].dtype and s[key].shape == r[key].shape
            x, y = decoded(s, key), decoded(r, key)
            if s[key].dtype == torch.bfloat16:
                tol = 2.0**-7
            elif s[key].dtype != torch.uint8:  # float rounding (float16: 2 ulp)
                tol = max(1e-5, 2 * torch.finfo(s[key].dtype).eps)
            bound = tol * torch.maximum(x.abs(), y.abs()) + 1e-30
            out["within_one_step"] &= bool(((x - y).abs() <= bound).all())
            if s[key].dtype in (torch.uint8, torch.bfloat16):
                out["equal"][0] += int((s[key] == r[key]).sum())
                out["equal"][1] += s[key].numel()
            if s[key].dtype == torch.uint8:
                sc, rc = s[f"{key}_scale"], r[f"{key}_scale"]
                rel = ((sc - rc).abs() / rc.abs().clamp_min(1e-30)).max().item()
                out["scale_rel"] = max(out["scale_rel"], rel)
    return out


def case(spec):
    dtype = getattr(torch, spec.pop("dtype"))
    steps = spec.pop("steps")
    if "lr_tensor" in spec:
        spec["lr"] = torch.tensor(spec.pop("lr_tensor"))
    options = {**dict(lr=1e-2, weight_decay=0.1, min_8bit_size=MIN_8BIT), **spec}
    a, b = make(dtype, options, triton=True), make(dtype, options)
    for t in range(steps):
        step(a, t)
        step(b, t)
    return compare(a, b)


def exact_streams():
    """beta1 = beta2 = 0 at step 1: m = g and v = g*g exactly on both paths, so every stored
    byte (codes, scales, stochastically rounded bf16 moments) must be identical: the code, the
    block maxima and the noise (key of seed, position, stream, step; element index)."""
    same = {}
    for name, dtype, opts in [
        ("int8", torch.float32, dict(state_dtype="int8")),
        ("bf16 seed 7", torch.float32, dict(state_dtype="bfloat16", rounding_seed=7)),
        ("bf16 params", torch.bfloat16, dict(state_dtype="bfloat16", rounding_seed=2**32 - 1)),
    ]:
        options = dict(lr=1e-2, betas=(0.0, 0.0), weight_decay=0.0, min_8bit_size=MIN_8BIT,
                       **opts)
        a, b = make(dtype, options, triton=True), make(dtype, options)
        step(a, 0)
        step(b, 0)
        ok = True
        for p, q in zip(a[0], b[0]):
            s, r = a[1].state[p], b[1].state[q]
            ok &= all(torch.equal(s[k], r[k]) for k in s if k != "delta_mu")
        same[name] = ok
    return same


def param_rounding():
    """bf16 weights with bf16_stochastic_round: the noise of stream 2 (the weights' new values
    differ from the reference's by float rounding only, so nearly all bf16 weights agree)."""
    options = dict(lr=1e-2, weight_decay=0.1, delta=0.05, state_dtype="int8",
                   bf16_stochastic_round=True, min_8bit_size=MIN_8BIT, rounding_seed=3)
    a, b = make(torch.bfloat16, options, triton=True), make(torch.bfloat16, options)
    for t in range(2):
        step(a, t)
        step(b, t)
    n = sum(p.numel() for p in a[0])
    equal = sum(int((p == q).sum()) for p, q in zip(a[0], b[0]))
    return equal / n


def snapshot(run):
    ps, opt, _ = run
    return [p.detach().clone() for p in ps] + [
        v.clone() for p in ps for v in opt.state[p].values()]


def grad_scaler():
    """A power-of-two grad_scale is unscaled in the kernel exactly (= the unscaled step, and
    the gradients are written back unscaled); found_inf changes no weight, state byte, step
    count or gradient."""
    options = dict(lr=1e-2, weight_decay=0.1, delta="adaptive", state_dtype="int8",
                   min_8bit_size=MIN_8BIT)
    a, b = make(torch.float32, options, triton=True), make(torch.float32, options, triton=True)
    _amp.update(grad_scale=torch.tensor(1024.0), found_inf=torch.tensor(0.0))
    try:
        step(a, 0, scale=1024.0)
    finally:
        _amp.clear()
    step(b, 0)
    scaled_equal = all(torch.equal(x, y) for x, y in zip(snapshot(a), snapshot(b)))
    grads_unscaled = all(torch.equal(p.grad, q.grad) for p, q in zip(a[0], b[0]))
    before = snapshot(a)
    _amp.update(grad_scale=torch.tensor(1024.0), found_inf=torch.tensor(1.0))
    try:
        step(a, 1, scale=1024.0)
    finally:
        _amp.clear()
    unchanged = all(torch.equal(x, y) for x, y in zip(snapshot(a), before))
    return {"scaled_equal": scaled_equal, "grads_unscaled": grads_unscaled,
            "skip_unchanged": unchanged}


def resume():
    """A state_dict round trip in the middle of a Triton run changes nothing: the resumed run
    equals the uninterrupted one bit for bit (codes, scales, noise continued)."""
    options = dict(lr=1e-2, weight_decay=0.1, delta="adaptive", state_dtype="bfloat16",
                   min_8bit_size=MIN_8BIT, rounding_seed=5)
    a = make(torch.float32, options, triton=True)
    step(a, 0)
    saved_p = [p.detach().clone() for p in a[0]]
    saved = copy.deepcopy(a[1].state_dict())
    step(a, 1)
    b = make(torch.float32, options, seed=9, triton=True)
    with torch.no_grad():
        for q, p in zip(b[0], saved_p):
            q.copy_(p)
    b[1].load_state_dict(saved)
    step(b, 1)
    return all(torch.equal(x, y) for x, y in zip(snapshot(a), snapshot(b)))


def refusals():
    group = dict(state_dtype="int8")
    out = {
        "cpu_ok_interpreting": triton_lowbit.lowbit_reason(group, [torch.zeros(3)]) is None,
        "float64": triton_lowbit.lowbit_reason(group, [torch.zeros(3, dtype=torch.float64)]),
        "strided": triton_lowbit.lowbit_reason(group, [torch.zeros(4, 6).t()]),
    }
    ps, opt, _ = make(torch.float32, dict(state_dtype="int8", min_8bit_size=0), triton=True)
    step((ps, opt, True), 0)
    state = opt.state[ps[0]]
    state["exp_avg_scale"] = state["exp_avg_scale"][:1]
    before = [p.detach().clone() for p in ps]
    try:
        step((ps, opt, True), 1)
        out["bad_scale"] = None
    except RuntimeError as exc:
        out["bad_scale"] = str(exc)
    out["bad_scale_unchanged"] = all(torch.equal(p, q) for p, q in zip(ps, before))
    out["hyper_ok"] = AdamStep is not None
    return out


if __name__ == "__main__":
    cases = json.loads(sys.argv[1])
    out = {"cases": [case(dict(c)) for c in cases], "exact": exact_streams(),
           "param_rounding_equal": param_rounding(), "grad_scaler": grad_scaler(),
           "resume_exact": resume(), "refusals": refusals()}
    print("RESULT " + json.dumps(out))
