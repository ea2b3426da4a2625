"""Low-bit AdamHD moments (``state_dtype``) and bf16 stochastic rounding, against float64
references written here: the 8-bit code's grid, the rounding's expectation, one step."""

import math

import pytest
import torch

from adamhd import AdamHD
from adamhd.optim.adamhd import lowbit

BLOCK = 256


# ---- float64 references of the formats (independent of the package) -------------------------


def grid(mantissa: int) -> torch.Tensor:
    """Every value of the unsigned code with ``mantissa`` bits, 4 exponent bits, in float64:
    0, the linear values under 2**-14, then (1 + j/2**M) * 2**e for e = -14..0 (up to 1)."""
    values = [k * 2.0 ** (-14 - mantissa) for k in range(2**mantissa)]
    for e in range(-14, 1):
        for j in range(2**mantissa):
            v = (1 + j / 2**mantissa) * 2.0**e
            if v <= 1.0:
                values.append(v)
    return torch.tensor(values, dtype=torch.float64)


def nearest(y: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    return points[(y[:, None] - points[None, :]).abs().argmin(dim=1)]


def quantise64(x: torch.Tensor, signed: bool) -> torch.Tensor:
    """Block-wise reference: each block of 256 scaled by max|x| (m) or max sqrt(x) (v), the
    scaled value moved to the nearest grid point, scaled back (squared for v)."""
    flat = x.double().reshape(-1)
    out = torch.empty_like(flat)
    points = grid(3 if signed else 4)
    for b in range(0, flat.numel(), BLOCK):
        part = flat[b:b + BLOCK] if signed else flat[b:b + BLOCK].sqrt()
        scale = part.abs().max()
        if scale == 0:
            out[b:b + BLOCK] = 0
            continue
        q = nearest(part.abs() / scale, points) * scale
        out[b:b + BLOCK] = torch.sign(part) * q if signed else q * q
    return out.view(x.shape)


def decode64(code: torch.Tensor, scale: torch.Tensor, signed: bool) -> torch.Tensor:
    """Values of uint8 codes from the bit layout (sign | 4 exponent | 3 or 4 mantissa bits)."""
    c = code.reshape(-1).long()
    mantissa = 3 if signed else 4
    mag = c & 127 if signed else c
    field, frac = mag >> mantissa, (mag & (2**mantissa - 1)).double()
    y = torch.where(field == 0, frac * 2.0 ** (-14 - mantissa),
                    (1 + frac / 2**mantissa) * torch.pow(2.0, (field - 15).double()))
    s = scale.double().repeat_interleave(BLOCK)[: c.numel()]
    if signed:
        return (torch.where(c >= 128, -1.0, 1.0) * y * s).view(code.shape)
    return ((y * s) ** 2).view(code.shape)


def spread(n: int, seed: int) -> torch.Tensor:
    """Values over 8 decades with both signs and exact zeros, float32."""
    g = torch.Generator().manual_seed(seed)
    x = torch.exp(torch.empty(n).uniform_(-18.0, 0.0, generator=g))
    x = x * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    x[torch.rand(n, generator=g) < 0.02] = 0.0
    return x


# ---- the 8-bit code --------------------------------------------------------------------------


@pytest.mark.parametrize("signed", [True, False])
def test_int8_code_is_the_nearest_grid_value(signed):
    x = spread(20 * BLOCK + 17, seed=1)  # a partial last block
    if not signed:
        x = x * x
    code, scale = lowbit.encode_int8(x, signed)
    assert code.dtype == torch.uint8 and code.shape == x.shape and scale.shape == (21,)
    # the package decodes in float32: one rounding of the product (and of the square)
    assert torch.allclose(decode64(code, scale, signed),
                          lowbit.decode_int8(code, scale, signed).double(), rtol=3e-7, atol=0)
    ours = lowbit.decode_int8(code, scale, signed).double()
    ref = quantise64(x, signed)
    close = torch.isclose(ours, ref, rtol=1e-6, atol=0)
    # float32 vs float64 scaling moves a value across a midpoint only at near-ties
    assert close.float().mean() > 0.999, int((~close).sum())
    step = 2.0 ** -(3 if signed else 4)
    rel = ((ours - x.double()).abs() / x.double().abs().clamp_min(1e-30))
    normal = x.double().abs() >= ref.abs().max() * 2.0**-12
    bound = step if signed else 2 * step + step**2  # v = root**2: twice the root's error
    assert rel[normal].max() <= bound * 0.5 * 1.0001


def test_int8_decode_matches_bit_layout():
    codes = torch.arange(256, dtype=torch.uint8).repeat(2)  # every code, two blocks
    scale = torch.tensor([1.0, 0.5])
    for signed in (True, False):
        ours = lowbit.decode_int8(codes, scale, signed).double()
        ref = decode64(codes, scale, signed)
        valid = codes.long() & (127 if signed else 255) <= (120 if signed else 240)
        assert torch.allclose(ours[valid], ref[valid], rtol=1e-7, atol=0)


def test_int8_zero_block_and_zero_size():
    code, scale = lowbit.encode_int8(torch.zeros(300), True)
    assert torch.equal(scale, torch.zeros(2)) and torch.equal(code, torch.zeros(300,
                                                                         dtype=torch.uint8))
    code, scale = lowbit.encode_int8(torch.zeros(0), False)
    assert code.shape == (0,) and scale.shape == (0,)


# ---- stochastic rounding ------------------------------------------------------------------


def test_bf16_stochastic_rounding_is_unbiased_exactly():
    """Over all 2**16 noise values the mean of the rounded values equals x (float64)."""
    g = torch.Generator().manual_seed(3)
    xs = torch.randn(6, generator=g) * torch.logspace(-20, 20, 6)
    noise = torch.arange(65536, dtype=torch.int64)
    for x in xs:
        rounded = lowbit.bf16_round_stochastic(x.repeat(65536), noise).double()
        lower = torch.tensor(x.item(), dtype=torch.float64)
        assert rounded.mean().item() == pytest.approx(lower.item(), rel=1e-12, abs=0)
        assert torch.unique(rounded).numel() <= 2
    nan = lowbit.bf16_round_stochastic(torch.full((4,), math.nan), noise[-4:])
    assert torch.isnan(nan).all()
    inf = lowbit.bf16_round_stochastic(torch.tensor([math.inf, -math.inf]), noise[-2:])
    assert inf.tolist() == [math.inf, -math.inf]


def test_noise_is_reproducible_and_roughly_uniform():
    key = lowbit.rounding_key(seed=5, position=2, stream=0, step=7)
    a = lowbit.noise16(key, 1 << 16)
    assert torch.equal(a, lowbit.noise16(key, 1 << 16))
    assert torch.equal(a[100:200], lowbit.noise16(key, 100, offset=100))
    counts = torch.bincount(a >> 12, minlength=16).double()
    assert (counts - 4096).abs().max() < 4 * 64  # 4 standard deviations
    other = lowbit.rounding_key(seed=5, position=2, stream=0, step=8)
    assert (lowbit.noise16(other, 1 << 16) != a).float().mean() > 0.99


# ---- one step against a float64 reference ------------------------------------------------


def step64(p, g, m, v, t, lr, wd, delta, betas=(0.9, 0.999), eps=1e-8, form="explicit"):
    """AdamHD with a fixed Huber threshold in float64; returns (p, m, v) unquantised."""
    b1, b2 = betas
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    u = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    tau = lr * wd
    if form == "explicit":
        p = p - tau * p.clamp(-delta, delta) - lr * u
    else:
        q = p - lr * u
        p = q - tau / (1 + tau) * q.clamp(-(1 + tau) * delta, (1 + tau) * delta)
    return p, m, v


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("form", ["explicit", "proximal"])
def test_int8_step_against_float64(foreach, form):
    g = torch.Generator().manual_seed(4)
    p = torch.nn.Parameter(torch.randn(3000, generator=g) * 0.1)
    opt = AdamHD([p], lr=1e-2, weight_decay=0.1, delta=0.05, decay_form=form,
                 state_dtype="int8", min_8bit_size=0, foreach=foreach)
    p.grad = torch.randn(3000, generator=g) * 1e-3
    opt.step()  # 1st step from zero moments
    state = opt.state[p]
    m0 = decode64(state["exp_avg"], state["exp_avg_scale"], True)
    v0 = decode64(state["exp_avg_sq"], state["exp_avg_sq_scale"], False)
    p0 = p.detach().double().clone()
    grad = spread(3000, seed=5) * 1e-2
    p.grad = grad.clone()
    opt.step()
    p1, m1, v1 = step64(p0, grad.double(), m0, v0, 2, 1e-2, 0.1, 0.05, form=form)
    assert torch.allclose(p.detach().double(), p1, rtol=1e-5, atol=1e-7)
    new_m = decode64(state["exp_avg"], state["exp_avg_scale"], True)
    new_v = decode64(state["exp_avg_sq"], state["exp_avg_sq_scale"], False)
    for ours, ref in ((new_m, quantise64(m1, True)), (new_v, quantise64(v1, False))):
        assert torch.isclose(ours, ref, rtol=1e-5, atol=0).float().mean() > 0.998


def test_bf16_step_against_float64_and_seeded():
    g = torch.Generator().manual_seed(6)
    base = torch.randn(5000, generator=g) * 0.1
    grads = [torch.randn(5000, generator=g) * 1e-3 for _ in range(3)]

    def run(seed):
        p = torch.nn.Parameter(base.clone())
        opt = AdamHD([p], lr=1e-2, weight_decay=0.1, delta=0.05, state_dtype="bfloat16",
                     rounding_seed=seed, foreach=False)
        for grad in grads[:2]:
            p.grad = grad.clone()
            opt.step()
        return p, opt

    p, opt = run(0)
    state = opt.state[p]
    assert state["exp_avg"].dtype == torch.bfloat16 and state["exp_avg_sq"].dtype == torch.bfloat16
    m0, v0 = state["exp_avg"].double(), state["exp_avg_sq"].double()
    p0 = p.detach().double().clone()
    p.grad = grads[2].clone()
    opt.step()
    p1, m1, v1 = step64(p0, grads[2].double(), m0, v0, 3, 1e-2, 0.1, 0.05)
    assert torch.allclose(p.detach().double(), p1, rtol=1e-5, atol=1e-7)
    for stored, exact in ((state["exp_avg"], m1), (state["exp_avg_sq"], v1)):
        down = exact.to(torch.float32).to(torch.bfloat16).double()  # a neighbour of exact
        ulp = (down.abs() * 2.0**-7).clamp_min(1e-38)
        assert ((stored.double() - exact).abs() <= ulp * 1.001).all()
        # stochastic: both neighbours occur
        assert (stored.double() > exact).any() and (stored.double() < exact).any()

    def moment(seed):
        p, opt = run(seed)
        return opt.state[p]["exp_avg"]

    assert torch.equal(moment(0), moment(0))  # seeded: reproducible
    assert not torch.equal(moment(0), moment(1))


def test_bf16_parameters_stochastic_rounding_does_not_stall():
    """lr*u far below half a bf16 ulp of the weights: round-to-nearest never moves them, the
    stochastic rounding moves them by the right amount on average."""
    start = torch.ones(4000)
    steps, lr = 100, 1e-4  # 100 * 1e-4 = 0.01 = 1.3 ulp of 1.0 in bf16
    out = {}
    for sr in (False, True):
        p = torch.nn.Parameter(start.to(torch.bfloat16))
        opt = AdamHD([p], lr=lr, weight_decay=0.0, bf16_stochastic_round=sr, foreach=False)
        for _ in range(steps):
            p.grad = torch.ones_like(p)
            opt.step()
        out[sr] = p.detach().double()
    assert torch.equal(out[False], start.double())  # stalled
    # Adam's update with a constant gradient is 1 per step (up to eps): expected 1 - 0.01
    assert out[True].mean().item() == pytest.approx(1 - steps * lr, abs=3e-4)


def test_state_bytes_per_parameter():
    p = torch.nn.Parameter(torch.randn(64, 1024))
    for dtype, expected in (("float32", 8.0), ("bfloat16", 4.0), ("int8", 2 + 8 / 256)):
        opt = AdamHD([p], state_dtype=dtype)
        p.grad = torch.randn_like(p)
        opt.step()
        state = opt.state[p]
        nbytes = sum(t.numel() * t.element_size() for k, t in state.items()
                     if k not in ("step", "delta_mu"))
        assert nbytes / p.numel() == expected
