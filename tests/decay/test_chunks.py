"""Chunk-by-chunk execution of the decay rules (``adamhd.decay.chunks``) changes no bit.

Tensors larger than a chunk with awkward sizes (chunk boundaries inside, a short last chunk) are
decayed chunk by chunk and, with chunking switched off (``CHUNK_ELEMENTS`` above their size), on
the whole tensor; both must agree bit for bit (signed zeros included), for every rule, form,
cautious setting, threshold kind and path. Both must also agree bit for bit with the whole-tensor
formulas as written before chunking existed (tensor clamp bounds, a boolean mask), written out
here. ``mean|p|`` summed by chunks is checked against float64.
"""

import math

import pytest
import torch

import adamhd.decay.chunks as chunks
from adamhd import AdamHD, with_decoupled_decay
from adamhd.decay import HuberDecay, L2Decay, mean_abs
from adamhd.decay.chunks import splits, sweep

CHUNK = chunks.CHUNK_ELEMENTS
SUM_SPLIT_ABOVE = chunks.SUM_SPLIT_ABOVE
SIZES = [2 * CHUNK + 12345, 3 * CHUNK]  # a short last chunk; an exact multiple
BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16}


@pytest.fixture
def unchunked(monkeypatch):
    """A context switch: inside ``with unchunked():`` every tensor is decayed whole."""

    class Switch:
        def __enter__(self):
            monkeypatch.setattr(chunks, "CHUNK_ELEMENTS", 1 << 62)
            monkeypatch.setattr(chunks, "SUM_SPLIT_ABOVE", 1 << 62)

        def __exit__(self, *exc):
            monkeypatch.setattr(chunks, "CHUNK_ELEMENTS", CHUNK)
            monkeypatch.setattr(chunks, "SUM_SPLIT_ABOVE", SUM_SPLIT_ABOVE)

    return Switch


def assert_same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    same = a.view(BITS[a.dtype]) == b.view(BITS[b.dtype])
    assert bool(same.all()), f"{int((~same).sum())} elements differ"


def weights_and_updates(n: int, dtype: torch.dtype, seed: int = 0):
    """Random weights and updates with the awkward values planted: zeros of both signs, values
    exactly at the threshold, tiny values whose product underflows, zero updates."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, generator=g, dtype=torch.float64) * 0.3
    u = torch.randn(n, generator=g, dtype=torch.float64)
    p[::97] = 0.0
    p[1::97] = -0.0
    p[2::89] = 0.25  # the fixed threshold below
    p[3::89] = -0.25
    p[4::83] = 1e-200
    u[4::83] = -1e-200
    u[5::79] = 0.0
    return p.to(dtype), u.to(dtype)


def decay_once(rule, p, u, tau, d, foreach, how):
    """One decay of ``rule`` on ``[p]`` around the update ``p -= 0.01*u``, as AdamHD orders it;
    ``how`` is "masks" (masks taken on p_t, applied after) or "signs" (explicit: in the sweep)."""
    ps = [p]
    if how == "signs":
        rule.apply_(ps, tau, [d], foreach, signs=[u])
        p.sub_(u, alpha=0.01)
        return
    masks = rule.masks([u], ps, foreach)
    if rule.before_update:
        rule.apply_(ps, tau, [d], foreach, masks)
    p.sub_(u, alpha=0.01)
    if not rule.before_update:
        rule.apply_(ps, tau, [d], foreach, masks)


def old_whole_tensor(p, u, tau, d, form, cautious):
    """The rules as written before chunking (tensor clamp bounds, a boolean mask), whole tensor."""
    p = p.clone()
    mask = torch.sign(u) * p >= 0 if cautious else None
    inf = not isinstance(d, torch.Tensor) and math.isinf(d)

    def pull(x, scale):
        bound = d.to(x.dtype) * scale if isinstance(d, torch.Tensor) else d * scale
        if mask is not None and inf:
            return x * mask
        out = torch.clamp(x, min=-bound, max=bound)
        return out if mask is None else out.mul_(mask)

    if form == "explicit":
        if mask is None and inf:
            p.mul_(1 - tau)
        else:
            p.add_(pull(p, 1.0), alpha=-tau)
    p.sub_(u, alpha=0.01)
    if form == "proximal":
        p.add_(pull(p, 1 + tau), alpha=-tau / (1 + tau))
    return p


RULES = [
    (cls, form, cautious)
    for cls in (L2Decay, HuberDecay)
    for form in ("explicit", "proximal")
    for cautious in (False, True)
]


def thresholds(cls, dtype):
    if cls is L2Decay:
        return {"inf": math.inf}
    mu_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return {"fixed": 0.25, "adaptive": torch.tensor(0.2345678, dtype=mu_dtype) * 1.5}


@pytest.mark.parametrize("cls, form, cautious", RULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_chunked_equals_whole_tensor_bit_for_bit(cls, form, cautious, dtype, unchunked):
    tau = 0.1 * 0.37
    for n in SIZES:
        p0, u = weights_and_updates(n, dtype)
        for d in thresholds(cls, dtype).values():
            rule = (L2Decay(form=form, cautious=cautious) if cls is L2Decay
                    else HuberDecay(delta=0.25, form=form, cautious=cautious))
            want = old_whole_tensor(p0, u, tau, d, form, cautious)
            hows = ["masks", "signs"] if cautious and form == "explicit" else ["masks"]
            for foreach in (False, True):
                for how in hows:
                    got = p0.clone()
                    assert splits(got)
                    decay_once(rule, got, u, tau, d, foreach, how)
                    whole = p0.clone()
                    with unchunked():
                        assert not splits(whole)
                        decay_once(rule, whole, u, tau, d, foreach, how)
                    assert_same_bits(got, whole)
                    if not foreach or dtype != torch.bfloat16:  # torch's foreach ops round
                        assert_same_bits(got, want)  # 1 - tau to bfloat16, per-tensor ops don't


@pytest.mark.parametrize("form", ["explicit", "proximal"])
def test_tensor_tau_chunked_equals_whole(form, unchunked):
    """capturable: tau (and so alpha and the proximal bound's scale) a tensor."""
    p0, u = weights_and_updates(SIZES[0], torch.float32, seed=3)
    tau = torch.tensor(0.05)
    rule = HuberDecay(delta=0.25, form=form, cautious=True)
    d = torch.tensor(0.3)
    got, whole = p0.clone(), p0.clone()
    decay_once(rule, got, u, tau, d, True, "masks")
    with unchunked():
        decay_once(rule, whole, u, tau, d, True, "masks")
    assert_same_bits(got, whole)


def test_mean_abs_by_chunks_is_as_accurate_as_float64():
    g = torch.Generator().manual_seed(0)
    n = 3 * 2**20 + 4321
    p = (torch.randn(n, generator=g, dtype=torch.float64) * 0.02 + 0.01).float()
    assert splits(p, above=SUM_SPLIT_ABOVE)
    want = p.double().abs().mean().item()
    got = mean_abs(p)
    assert got.dtype == torch.float32
    assert abs(got.item() - want) / want < 2e-7  # float32's own rounding of the result: 6e-8
    whole = p.abs().mean(dtype=torch.float32).item()  # the whole-tensor cascade
    assert abs(got.item() - want) <= max(abs(whole - want), 6e-8 * want)
    p64 = p.double()
    assert mean_abs(p64).item() == pytest.approx(want, rel=1e-14)
    pb = p.bfloat16()
    want_b = pb.double().abs().mean().item()
    assert mean_abs(pb).item() == pytest.approx(want_b, rel=2e-7)


def test_mean_abs_of_non_finite_weights():
    p = torch.ones(SUM_SPLIT_ABOVE + 3)
    p[SUM_SPLIT_ABOVE - 5] = math.inf
    assert mean_abs(p).item() == math.inf
    p[7] = math.nan
    assert math.isnan(mean_abs(p).item())


def test_sweep_falls_back_to_the_whole_tensor():
    calls = []

    def record(*xs):
        calls.append([None if x is None else x.numel() for x in xs])

    big = torch.zeros(SIZES[0])
    sweep(record, big, None)
    assert len(calls) == 3 and calls[-1] == [SIZES[0] - 2 * CHUNK, None]

    class Sub(torch.Tensor):
        pass

    cases = [
        torch.zeros(CHUNK),  # one chunk or less
        torch.zeros(1000, 300).t(),  # not contiguous
        torch.zeros(SIZES[0]).as_subclass(Sub),  # a subclass (DTensor, ...): its own dispatch
        torch.zeros(SIZES[0], requires_grad=True),  # autograd records (differentiable=True)
    ]
    for t in cases:
        calls.clear()
        with torch.enable_grad():
            sweep(record, t)
        assert calls == [[t.numel()]]
    calls.clear()
    sweep(record, torch.zeros(SIZES[0]), torch.zeros(SIZES[0] + 1))  # sizes differ
    assert len(calls) == 1


def make_params(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) * 0.05, torch.randn(37, 11, generator=g) * 0.05]


def run_steps(opt_factory, params, steps=3):
    ps = [p.clone().requires_grad_() for p in params]
    opt = opt_factory(ps)
    g = torch.Generator().manual_seed(7)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g) * 1e-2
        opt.step()
    return ps, opt


ADAMHD_CASES = [
    dict(delta=0.05),
    dict(delta=0.05, decay_form="proximal"),
    dict(delta=0.05, cautious_decay=True),
    dict(delta=0.05, cautious_decay=True, decay_form="proximal"),
    dict(decay="l2", cautious_decay=True),
    dict(decay="l2", cautious_decay=True, decay_form="proximal"),
]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("case", ADAMHD_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in
                                                                        c.items()))
def test_adamhd_chunked_equals_whole(foreach, case, unchunked):
    params = make_params(SIZES[0])

    def factory(ps):
        return AdamHD(ps, lr=1e-2, weight_decay=0.5, foreach=foreach, fused=False, **case)

    got, opt = run_steps(factory, params)
    with unchunked():
        want, opt_whole = run_steps(factory, params)
    for a, b in zip(got, want):
        assert_same_bits(a.detach(), b.detach())
    for pa, pb in zip(got, want):
        for key in ("exp_avg", "exp_avg_sq"):
            assert_same_bits(opt.state[pa][key], opt_whole.state[pb][key])


@pytest.mark.parametrize("foreach", [False, True])
def test_adamhd_adaptive_chunked_within_float32_of_whole(foreach, unchunked):
    """The adaptive threshold's mean|p| is summed differently (chunk sums added in float64), so
    the weights agree to float32 rounding, not bit for bit."""
    params = make_params(SIZES[0])

    def factory(ps):
        return AdamHD(ps, lr=1e-2, weight_decay=0.5, foreach=foreach, fused=False,
                      cautious_decay=True)

    got, opt = run_steps(factory, params)
    with unchunked():
        want, opt_whole = run_steps(factory, params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(opt.state[a]["delta_mu"], opt_whole.state[b]["delta_mu"],
                                   rtol=1e-6, atol=0)


@pytest.mark.parametrize("form", ["explicit", "proximal"])
@pytest.mark.parametrize("cautious", [False, True])
def test_wrapper_chunked_equals_whole(form, cautious, unchunked):
    SGDHD = with_decoupled_decay(torch.optim.SGD)
    params = make_params(SIZES[0], seed=1)

    def factory(ps):
        return SGDHD(ps, lr=0.1, momentum=0.9, weight_decay=0.5, delta=0.05, decay_form=form,
                     cautious_decay=cautious)

    got, _ = run_steps(factory, params)
    with unchunked():
        want, _ = run_steps(factory, params)
    for a, b in zip(got, want):
        assert_same_bits(a.detach(), b.detach())


def test_signs_only_for_the_cautious_explicit_form_and_nothing_changes():
    p, u = weights_and_updates(100, torch.float32)
    before = p.clone()
    for rule in (HuberDecay(delta=0.25, form="proximal", cautious=True),
                 HuberDecay(delta=0.25, cautious=False)):
        with pytest.raises(ValueError, match="signs"):
            rule.apply_([p], 0.1, [0.25], True, signs=[u])
    assert torch.equal(p, before)
