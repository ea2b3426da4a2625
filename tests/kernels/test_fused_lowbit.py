"""The fused low-bit CPU step (``adamhd::fused_lowbit_step_``, issue 19) against the reference
paths: bit for bit against the working-copy path run with the fused float32 kernel (the same
float step, codes and noise), to rounding against the foreach and single-tensor paths; state
after steps, after a GradScaler skip and after a state_dict round trip; bad inputs."""

import copy
import itertools
import math

import pytest
import torch
from torch import nn

from adamhd import AdamHD
from adamhd.kernels import cpu, spec
from adamhd.optim.adamhd import functional

pytestmark = pytest.mark.skipif(cpu.load() is None, reason=f"no CPU kernel: {cpu.build_error()}")

SHAPES = [(700,), (64, 40), (3, 1100), (5,), (0,), (2, 600)]  # partial blocks, small, empty
MIN_8BIT = 512


def make_params(dtype, seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter((torch.randn(s, generator=g) * 0.2).to(dtype)) for s in shapes]


def grads_for(params, step, seed=100):
    g = torch.Generator().manual_seed(seed + step)
    out = []
    for p in params:
        x = torch.randn(p.shape, generator=g) * torch.exp(torch.randn(p.shape, generator=g) * 2)
        out.append((x * 1e-3).to(p.dtype))
    return out


def run(params, opt, steps, first=0):
    for t in range(first, first + steps):
        for p, grad in zip(params, grads_for(params, t)):
            p.grad = grad.clone()
        opt.step()


def snapshot(params, opt):
    return ([p.detach().clone() for p in params],
            [{k: v.clone() for k, v in opt.state[p].items()} for p in params])


def assert_equal_snapshots(a, b):
    for x, y in zip(a[0], b[0]):
        assert x.dtype == y.dtype and torch.equal(x, y)
    for s, r in zip(a[1], b[1]):
        assert s.keys() == r.keys()
        for k in s:
            assert s[k].dtype == r[k].dtype and torch.equal(s[k], r[k]), k


DECAYS = {
    "huber explicit": dict(delta=0.05),
    "huber adaptive proximal": dict(delta="adaptive", decay_form="proximal"),
    "l2 explicit cautious": dict(decay="l2", cautious_decay=True),
    "adaptive cautious maximize": dict(delta="adaptive", cautious_decay=True, maximize=True),
    "no decay, lr tensor": dict(weight_decay=0.0, lr=torch.tensor(3e-3)),
}
FORMATS = [  # (param dtype, options)
    (torch.float32, dict(state_dtype="int8")),
    (torch.float32, dict(state_dtype="bfloat16")),
    (torch.bfloat16, dict(state_dtype="int8", bf16_stochastic_round=True)),
    (torch.bfloat16, dict(state_dtype="bfloat16")),
    (torch.bfloat16, dict(bf16_stochastic_round=True, rounding_seed=7)),
    (torch.float16, dict(state_dtype="int8")),
]


@pytest.mark.parametrize("fmt,decay", list(itertools.product(range(len(FORMATS)), DECAYS)),
                         ids=lambda x: str(x))
def test_fused_equals_working_copies_on_the_float32_kernel(fmt, decay, monkeypatch):
    dtype, options = FORMATS[fmt]
    kw = {**dict(lr=1e-2, weight_decay=0.1, min_8bit_size=MIN_8BIT), **options, **DECAYS[decay]}
    fused = make_params(dtype)
    opt = AdamHD(fused, fused=True, **kw)
    run(fused, opt, 3)
    assert opt.paths == {0: "fused"}
    ref = make_params(dtype)
    ref_opt = AdamHD(ref, foreach=False, **kw)  # its float step: the patched one below
    plain = functional.adamhd_step  # the working copies' float step: the fp32 fused kernel

    def on_kernel(tensors, hyper, foreach=False, **kw):
        return plain(tensors, hyper, fused=True)

    monkeypatch.setattr(functional, "adamhd_step", on_kernel)
    run(ref, ref_opt, 3)
    assert_equal_snapshots(snapshot(fused, opt), snapshot(ref, ref_opt))
    if options.get("state_dtype") == "int8":
        assert opt.state[fused[1]]["exp_avg"].dtype == torch.uint8
        assert opt.state[fused[3]]["exp_avg"].dtype in (torch.float32, torch.bfloat16,
                                                        torch.float16)


def decoded(state, key):
    from adamhd.optim.adamhd import lowbit

    return lowbit.decode_moment(state, key, None, torch.float64)


@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16"])
@pytest.mark.parametrize("foreach", [False, True])
def test_fused_agrees_with_the_reference_paths_to_rounding(state_dtype, foreach):
    """The float step differs from the foreach/single one by float rounding (as fused_step_);
    a stored moment then differs only where that crosses a code (or bf16) boundary: at most one
    step of the code, in few elements."""
    kw = dict(lr=1e-2, weight_decay=0.1, delta="adaptive", min_8bit_size=MIN_8BIT,
              state_dtype=state_dtype)
    fused, ref = make_params(torch.float32), make_params(torch.float32)
    opt, ref_opt = AdamHD(fused, fused=True, **kw), AdamHD(ref, foreach=foreach, **kw)
    run(fused, opt, 4)
    run(ref, ref_opt, 4)
    for p, q in zip(fused, ref):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7)
        if p.numel() == 0:
            continue
        s, r = opt.state[p], ref_opt.state[q]
        for key, step in (("exp_avg", 2.0**-3), ("exp_avg_sq", 2.0**-3 + 2.0**-8)):
            a, b = decoded(s, key), decoded(r, key)
            if s[key].dtype == torch.float32:
                assert torch.allclose(a, b, rtol=1e-5, atol=1e-12)
                continue
            if s[key].dtype == torch.bfloat16:
                step = 2.0**-7
            tol = step * torch.maximum(a.abs(), b.abs()) + 1e-30
            assert ((a - b).abs() <= tol).all(), key
            assert (s[key] == r[key]).float().mean() >= 0.99, key


@pytest.mark.parametrize("form", ["explicit", "proximal"])
def test_int8_fused_step_against_float64(form):
    """One fused step from stored int8 moments, against AdamHD in float64 written here."""
    g = torch.Generator().manual_seed(4)
    p = nn.Parameter(torch.randn(3000, generator=g) * 0.1)
    opt = AdamHD([p], lr=1e-2, weight_decay=0.1, delta=0.05, decay_form=form,
                 state_dtype="int8", min_8bit_size=0, fused=True)
    p.grad = torch.randn(3000, generator=g) * 1e-3
    opt.step()
    state = opt.state[p]
    m0, v0 = decoded(state, "exp_avg"), decoded(state, "exp_avg_sq")
    p0 = p.detach().double().clone()
    grad = torch.randn(3000, generator=g) * 1e-2
    p.grad = grad.clone()
    opt.step()
    b1, b2, lr, tau, d, t = 0.9, 0.999, 1e-2, 1e-3, 0.05, 2
    m = b1 * m0 + (1 - b1) * grad.double()
    v = b2 * v0 + (1 - b2) * grad.double() ** 2
    u = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + 1e-8)
    if form == "explicit":
        expected = p0 - tau * p0.clamp(-d, d) - lr * u
    else:
        q = p0 - lr * u
        expected = q - tau / (1 + tau) * q.clamp(-(1 + tau) * d, (1 + tau) * d)
    assert torch.allclose(p.detach().double(), expected, rtol=1e-5, atol=1e-7)
    # stored moments: within half a code step (m: 2**-4 relative, v: (1 + 2**-5)**2 - 1)
    for key, exact, half in (("exp_avg", m, 2.0**-4), ("exp_avg_sq", v, 0.0635)):
        ours = decoded(state, key)
        block_max = exact.abs().view(-1, 1000).amax(dim=1).repeat_interleave(1000)
        big = exact.abs() >= 2.0**-10 * block_max  # above the code's linear range
        assert ((ours - exact).abs() <= half * exact.abs() * 1.0001)[big].all(), key


def test_threads_do_not_change_the_result():
    shapes = [(5, 40000), (300,)]  # more than two chunks of 32768 elements
    out = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            ps = make_params(torch.bfloat16, shapes=shapes)
            opt = AdamHD(ps, fused=True, state_dtype="int8", delta=0.1,
                         bf16_stochastic_round=True, min_8bit_size=0)
            run(ps, opt, 2)
            out.append(snapshot(ps, opt))
    finally:
        torch.set_num_threads(threads)
    assert_equal_snapshots(out[0], out[1])


@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16"])
def test_resume_is_bit_exact_and_the_formats_are_shared(state_dtype):
    kw = dict(lr=1e-2, weight_decay=0.1, delta="adaptive", min_8bit_size=MIN_8BIT,
              state_dtype=state_dtype, bf16_stochastic_round=True)
    ps = make_params(torch.bfloat16)
    opt = AdamHD(ps, fused=True, **kw)
    run(ps, opt, 2)
    saved_p = [p.detach().clone() for p in ps]
    saved = copy.deepcopy(opt.state_dict())
    run(ps, opt, 2, first=2)
    for path in (dict(fused=True), dict(fused=None)):
        qs = make_params(torch.bfloat16, seed=5)
        with torch.no_grad():
            for q, p in zip(qs, saved_p):
                q.copy_(p)
        other = AdamHD(qs, **path, **kw)
        other.load_state_dict(copy.deepcopy(saved))  # torch's load shares the step tensors
        assert_equal_snapshots((saved_p, [{k: v for k, v in s.items()}
                                          for s in saved["state"].values()]),
                               snapshot(qs, other))
        run(qs, other, 2, first=2)
        assert_equal_snapshots(snapshot(ps, opt), snapshot(qs, other))


def test_grad_scaler_fused_unscales_and_skips():
    kw = dict(lr=1e-2, weight_decay=0.1, state_dtype="int8", min_8bit_size=MIN_8BIT,
              fused=True)
    ps, qs = make_params(torch.float32), make_params(torch.float32)
    opt, ref = AdamHD(ps, **kw), AdamHD(qs, **kw)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1000)
    scaler.scale(torch.ones(()))  # creates its scale
    for t in range(2):  # a power-of-two scale: unscaling in the kernel is exact
        for p, q, grad in zip(ps, qs, grads_for(ps, t)):
            p.grad, q.grad = grad * 1024.0, grad.clone()
        scaler.step(opt)
        scaler.update()
        ref.step()
    assert_equal_snapshots(snapshot(ps, opt), snapshot(qs, ref))
    before = snapshot(ps, opt)
    for p in ps:
        p.grad = torch.full_like(p, math.inf)
    scaler.step(opt)  # found_inf: the kernel changes nothing, not even the step count
    assert_equal_snapshots(snapshot(ps, opt), before)


def test_default_path_and_refusals():
    p32 = make_params(torch.float32, shapes=[(600,)])
    opt = AdamHD(p32, state_dtype="int8", min_8bit_size=0)
    run(p32, opt, 1)
    assert opt.paths == {0: "fused"}
    p64 = [nn.Parameter(torch.randn(600, dtype=torch.float64))]
    with pytest.raises(RuntimeError, match="fused=True cannot be honoured: .*torch.float64"):
        AdamHD(p64, state_dtype="int8", fused=True)
    opt = AdamHD(p64, state_dtype="int8")
    run(p64, opt, 1)
    assert opt.paths[0] != "fused"  # float64 keeps float64 moments, on the reference paths
    assert spec.state_reason({"state_dtype": "int8"}, "cpu") is None
    assert "not in the fused cpu kernel" in spec.state_reason({"state_dtype": "int4"}, "cpu")


def test_the_op_checks_before_anything_changes():
    ps = make_params(torch.float32, shapes=[(600,), (300,)])
    opt = AdamHD(ps, fused=True, state_dtype="int8", min_8bit_size=0)
    run(ps, opt, 1)
    before = snapshot(ps, opt)
    states = [opt.state[p] for p in ps]
    args = dict(lr_tensor=None, grad_scale=None, found_inf=None, lr=1e-3, beta1=0.9,
                beta2=0.999, eps=1e-8, weight_decay=0.0, decay_kind=0, delta=1.0,
                delta_scale=1.5, delta_beta=0.99, adaptive=False, maximize=False,
                cautious=False, seed=0, param_sr=False)
    op = torch.ops.adamhd.fused_lowbit_step_
    grads = [torch.ones_like(p) for p in ps]
    ms = [s["exp_avg"] for s in states]
    vs = [s["exp_avg_sq"] for s in states]
    steps = [s["step"] for s in states]
    scales = [s["exp_avg_scale"] for s in states]
    sq_scales = [s["exp_avg_sq_scale"] for s in states]
    with pytest.raises(RuntimeError, match="1 scales for 2 uint8 moments|one exp_avg_scale"):
        op(ps, grads, ms, vs, scales[:1], sq_scales[:1], steps, [], [0, 1], **args)
    with pytest.raises(RuntimeError, match="scales of parameter 1 must be 2"):
        op(ps, grads, ms, vs, [scales[0], scales[0][:1]], sq_scales, steps, [], [0, 1], **args)
    with pytest.raises(RuntimeError, match="moments of parameter 0 are Int"):
        op(ps, grads, [m.int() for m in ms], vs, scales, sq_scales, steps, [], [0, 1], **args)
    with pytest.raises(RuntimeError, match="differ in length"):
        op(ps, grads, ms, vs, scales, sq_scales, steps, [], [0], **args)
    with pytest.raises(RuntimeError, match="seed"):
        op(ps, grads, ms, vs, scales, sq_scales, steps, [], [0, 1], **{**args, "seed": -1})
    assert_equal_snapshots(snapshot(ps, opt), before)


def test_schema_is_the_registered_ops():
    registered = str(torch.ops.adamhd.fused_lowbit_step_.default._schema)
    assert registered == "adamhd::" + spec.LOWBIT_SCHEMA


@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16"])
def test_nan_parameters_give_the_float32_kernels_nan_bits(state_dtype, monkeypatch):
    """NaN parameters (either sign), fixed threshold: after two steps every parameter's bits,
    NaN payloads included, equal the working-copy path's on the fp32 kernel (the low-bit
    step's Huber clamp is excess_ordered, plain max/min; the fp32 kernel's is NaN-propagating).
    With the adaptive threshold (a NaN threshold for the tensor) the payloads differ, on main's
    kernel as well: not asserted here."""
    kw = dict(lr=1e-2, weight_decay=0.1, delta=0.05, min_8bit_size=MIN_8BIT,
              state_dtype=state_dtype)

    def with_nan():
        params = make_params(torch.float32)
        with torch.no_grad():
            params[0][3] = math.nan
            params[2][1, 5] = -math.nan
        return params

    fused, ref = with_nan(), with_nan()
    opt, ref_opt = AdamHD(fused, fused=True, **kw), AdamHD(ref, foreach=False, **kw)
    plain = functional.adamhd_step
    monkeypatch.setattr(functional, "adamhd_step",
                        lambda tensors, hyper, foreach=False, **k: plain(tensors, hyper,
                                                                          fused=True))
    run(fused, opt, 2)
    run(ref, ref_opt, 2)
    assert opt.paths == {0: "fused"}
    assert torch.isnan(fused[0][3]) and torch.isnan(fused[2][1, 5])
    for p, q in zip(fused, ref):
        assert torch.equal(p.detach().view(torch.int32), q.detach().view(torch.int32))
