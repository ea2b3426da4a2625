"""The update rule's per-tensor options in the fused CPU kernel (cautious, trust_ratio, adanorm,
diffgrad; issue 20): every combination against the Python definition (the single-tensor path,
``rule_step``) and against a float64 reference written here, state included."""

import itertools
import math

import pytest
import torch

from adamhd import AdamHD
from adamhd.decay import HuberDecay
from adamhd.hyper import AdamStep
from adamhd.kernels import fused_adamhd, spec
from adamhd.update_rules import UpdateRule
from tests.kernels.conftest import clone_params, make_params
from tests.kernels.test_fused_cpu import assert_states_close, train

FLAGS = ("cautious", "trust_ratio", "adanorm", "diffgrad")
COMBOS = [dict(zip(FLAGS, on)) for on in itertools.product((False, True), repeat=4)
          if any(on)]
SHAPES = [(0,), (), (7,), (33, 17), (5, 4, 3), (70001,)]


def _ids(case):
    return "+".join(k for k, v in case.items() if v is True) or "none"


@pytest.mark.parametrize("combo", COMBOS, ids=_ids)
def test_every_combination_matches_the_python_definition_float32(cpu_kernel, combo):
    kw = dict(lr=1e-2, weight_decay=0.5, **combo)
    ref_ps = make_params(torch.float32, shapes=SHAPES)
    ps = clone_params(ref_ps)
    ref = train(ref_ps, "single", steps=4, **kw)
    opt = train(ps, "fused", steps=4, **kw)
    assert set(opt.paths.values()) == {"fused"} and set(ref.paths.values()) == {"single"}
    assert_states_close(opt, ps, ref, ref_ps, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("combo,dtype", [(c, torch.bfloat16) for c in COMBOS]
                         + [(COMBOS[-1], torch.float16)],
                         ids=lambda x: _ids(x) if isinstance(x, dict) else str(x)[6:])
def test_every_combination_bfloat16_within_its_rounding(cpu_kernel, combo, dtype):
    """bf16 (and fp16) weights: the kernel computes in float32 and rounds p, m, v, prev_grad
    on store; the Python definition run in float32 from the same 16-bit values is within a few
    bf16 ulps."""
    kw = dict(lr=1e-2, weight_decay=0.5, **combo)
    ps = make_params(dtype, shapes=SHAPES, transposed=False)
    ref_ps = clone_params(ps, torch.float32)
    opt, ref = AdamHD(ps, fused=True, **kw), AdamHD(ref_ps, foreach=False, **kw)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p, q in zip(ps, ref_ps):  # the same (bf16) gradient values for both
            p.grad = torch.randn(p.shape, generator=gen).to(dtype)
            q.grad = p.grad.float()
        opt.step()
        ref.step()
    assert set(opt.paths.values()) == {"fused"}
    for a, b in zip(ps, ref_ps):
        torch.testing.assert_close(a.detach().float(), b.detach(), rtol=2e-2, atol=2e-2)
        sa, sb = opt.state[a], ref.state[b]
        assert set(sa) == set(sb)
        for key in sa:
            assert sa[key].dtype == (torch.float32 if key in ("delta_mu", "adanorm_e", "step")
                                     else dtype), key
            torch.testing.assert_close(sa[key].float(), sb[key].float(), rtol=2e-2, atol=1e-3,
                                       msg=key)


@pytest.mark.parametrize("case", [
    dict(decay_form="proximal", amsgrad=True),
    dict(cautious_decay=True, maximize=True),
    dict(update="atan2", delta=0.3, cautious_decay=True, decay_form="proximal"),
    dict(update="softplus", betas=(0.3, 0.6)),  # lerp's other branch
    dict(weight_decay=0.0, amsgrad=True),
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_options_with_the_other_settings_match_the_python_definition(cpu_kernel, case):
    kw = {**dict(lr=1e-2, weight_decay=0.5, cautious=True, trust_ratio=True, adanorm=True,
                 diffgrad=True), **case}
    ref_ps = make_params(torch.float32, shapes=SHAPES)
    ps = clone_params(ref_ps)
    ref = train(ref_ps, "single", steps=4, **kw)
    opt = train(ps, "fused", steps=4, **kw)
    assert set(opt.paths.values()) == {"fused"}
    assert_states_close(opt, ps, ref, ref_ps, rtol=2e-5, atol=2e-6)


# ------------------------------------------------------------------------------------------------
# float64 reference, written here (docs/update-rules.md)
# ------------------------------------------------------------------------------------------------


def reference_step(p, g, st, t, h, o):
    """One step of one tensor in float64; ``st``: m, v, prev, e, mu (updated in place)."""
    beta1, beta2 = h["betas"]
    g = -g if h.get("maximize") else g
    n = max(p.numel(), 1)
    st["mu"] += (1 - 0.99) * (p.abs().sum().item() / n - st["mu"])
    d = 1.5 * st["mu"]
    m_in = g
    if o["adanorm"]:
        norm = g.norm().item()
        st["e"] = 0.95 * st["e"] + 0.05 * norm
        m_in = g * (st["e"] / norm if st["e"] > norm and norm > 0 else 1.0)
    st["m"] = beta1 * st["m"] + (1 - beta1) * m_in
    st["v"] = beta2 * st["v"] + (1 - beta2) * g * g
    m_hat = st["m"] / (1 - beta1**t)
    if o["diffgrad"]:
        m_hat = m_hat / (1 + torch.exp(-(st["prev"] - g).abs()))
        st["prev"] = g.clone()
    u = m_hat / ((st["v"] / (1 - beta2**t)).sqrt() + 1e-8)
    if o["cautious"]:
        mask = (u * g > 0).double()
        u = u * mask / max(mask.sum().item() / n, 1e-3)
    if o["trust_ratio"]:
        pn, un = p.norm().item(), u.norm().item()
        u = u * (pn / un if pn > 0 and un > 0 else 1.0)
    tau = h["lr"] * h["weight_decay"]
    return p - tau * p.clamp(-d, d) - h["lr"] * u


@pytest.mark.parametrize("combo", COMBOS, ids=_ids)
def test_float64_kernel_matches_the_reference_written_here(cpu_kernel, combo):
    h = dict(lr=3e-2, betas=(0.9, 0.99), weight_decay=0.5, maximize=combo["cautious"])
    gen = torch.Generator().manual_seed(7)
    ps = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    work = [torch.nn.Parameter(p.clone()) for p in ps]
    opt = AdamHD(work, fused=True, **h, **combo)
    states = [dict(m=torch.zeros_like(p), v=torch.zeros_like(p), prev=torch.zeros_like(p),
                   e=0.0, mu=p.abs().mean().item() if p.numel() else 0.0) for p in ps]
    for t in range(1, 4):
        gs = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in ps]
        for w, g in zip(work, gs):
            w.grad = g.clone()
        opt.step()
        ps = [reference_step(p, g, st, t, h, combo) for p, g, st in zip(ps, gs, states)]
    for w, p, st in zip(work, ps, states):
        torch.testing.assert_close(w.detach(), p, rtol=1e-9, atol=1e-12)
        s = opt.state[w]
        torch.testing.assert_close(s["exp_avg"], st["m"], rtol=1e-9, atol=1e-12)
        assert s["delta_mu"].item() == pytest.approx(st["mu"], rel=1e-12)
        if combo["adanorm"]:
            assert s["adanorm_e"].item() == pytest.approx(st["e"], rel=1e-12)
        if combo["diffgrad"]:  # the gradient the step used (negated with maximize)
            torch.testing.assert_close(s["prev_grad"], st["prev"], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# state_dict, GradScaler, threads, refusals
# ------------------------------------------------------------------------------------------------

ALL = dict(cautious=True, trust_ratio=True, adanorm=True, diffgrad=True)


def test_state_dict_round_trip_is_bit_exact(cpu_kernel):
    kw = dict(lr=1e-2, weight_decay=0.5, fused=True, **ALL)
    ps = make_params(torch.float32, shapes=SHAPES)
    resumed = clone_params(ps)
    gen = torch.Generator().manual_seed(3)
    grads = [[torch.randn(p.shape, generator=gen) for p in ps] for _ in range(6)]

    def steps(opt, params, gs):
        for step_grads in gs:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            opt.step()

    opt = AdamHD(ps, **kw)
    steps(opt, ps, grads)
    first = AdamHD(resumed, **kw)
    steps(first, resumed, grads[:3])
    saved = first.state_dict()
    second = AdamHD(resumed, **kw)
    second.load_state_dict(saved)
    steps(second, resumed, grads[3:])
    assert second.paths[0] == "fused"
    for a, b in zip(ps, resumed):
        assert torch.equal(a, b)
        for key in opt.state[a]:
            assert torch.equal(opt.state[a][key], second.state[b][key]), key


def test_the_cached_norm_of_p_equals_a_recomputed_one(cpu_kernel):
    """The trust ratio's ||p_t||^2 is kept from the last step (as sum|p|): dropping the caches
    before every step (recomputing both) changes nothing, bit for bit."""
    from adamhd.kernels import forget_abs_means

    runs = []
    for forget in (False, True):
        ps = make_params(torch.float32, shapes=[(70001,), (33, 17), (5,)], transposed=False)
        opt = AdamHD(ps, lr=1e-2, weight_decay=0.5, fused=True, trust_ratio=True)
        gen = torch.Generator().manual_seed(2)
        for _ in range(4):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen)
            if forget:
                forget_abs_means()
            opt.step()
        runs.append([p.detach().clone() for p in ps])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_grad_scale_unscales_and_found_inf_changes_nothing(cpu_kernel):
    kw = dict(lr=1e-2, weight_decay=0.5, fused=True, **ALL)
    ps = make_params(torch.float32, shapes=SHAPES, transposed=False)
    ref_ps = clone_params(ps)
    opt, ref = AdamHD(ps, **kw), AdamHD(ref_ps, **kw)
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):
        gs = [torch.randn(p.shape, generator=gen) for p in ps]
        for p, q, g in zip(ps, ref_ps, gs):
            p.grad, q.grad = g * 1024.0, g.clone()
        opt.grad_scale, opt.found_inf = torch.tensor(1024.0), torch.tensor(0.0)
        opt.step()
        ref.step()
        for p, g in zip(ps, gs):
            torch.testing.assert_close(p.grad, g)
    assert_states_close(opt, ps, ref, ref_ps, rtol=1e-6, atol=1e-7)
    before = [(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}) for p in ps]
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    for p, (w, state) in zip(ps, before):
        assert torch.equal(p, w)
        assert all(torch.equal(opt.state[p][k], v) for k, v in state.items())


def test_the_result_does_not_depend_on_the_thread_count(cpu_kernel):
    """The per-tensor sums are added chunk by chunk in chunk order."""
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            ps = make_params(torch.float32, shapes=[(300000,), (70001,), (5,)], transposed=False)
            opt = train(ps, "fused", steps=3, lr=1e-2, weight_decay=0.5, **ALL)
            results.append([p.detach().clone() for p in ps] + [
                opt.state[p][k] for p in ps for k in ("adanorm_e", "prev_grad", "exp_avg")])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_options_take_the_fused_path_by_default_on_cpu(cpu_kernel):
    for combo in COMBOS:
        p = torch.nn.Parameter(torch.randn(5))
        p.grad = torch.randn(5)
        opt = AdamHD([p], **combo)
        opt.step()
        assert opt.paths[0] == "fused", combo
    assert spec.update_reason(UpdateRule(cautious=True), "cpu") is None
    assert "cuda kernel" in spec.update_reason(UpdateRule(adanorm=True), "cuda")


def test_missing_rule_state_is_refused_before_anything_changes(cpu_kernel):
    p, g = torch.randn(6), torch.randn(6)
    m, v, step = torch.zeros(6), torch.zeros(6), torch.zeros(())
    before = p.clone()
    h = AdamStep(decay=HuberDecay(delta=0.5), lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8,
                 weight_decay=0.1, update=UpdateRule(diffgrad=True))
    with pytest.raises(ValueError, match="prev_grad"):
        fused_adamhd([p], [g], [m], [v], [], [step], [], h)
    with pytest.raises(RuntimeError, match="prev_grad of parameter 0"):
        fused_adamhd([p], [g], [m], [v], [], [step], [], h,
                     rule_states=[{"prev_grad": torch.zeros(5)}])
    assert torch.equal(p, before) and step.item() == 0 and torch.equal(m, torch.zeros(6))


# ------------------------------------------------------------------------------------------------
# the kernel's softplus and atan2 forms (float vectors): their stated error bounds
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [1.0, 3.7, 50.0, 1000.0])
def test_softplus_form_is_within_3e7_relative(cpu_kernel, beta):
    """On AVX512 the kernel's softplus is a table of polynomials (no exp, no log); measured at
    most 2.2e-7 relative on this grid, torch's own float32 softplus 1.7e-7. Across torch's
    threshold (beta*x = 20) and the table's end (beta*x = 16). Other CPUs keep the exp and log1p
    polynomials (bound 1e-6 here)."""
    x = torch.linspace(0, 25 / beta, 400_003, dtype=torch.float64).float()
    exact = torch.nn.functional.softplus(x.double(), beta=beta, threshold=1e9)
    got = cpu_kernel.vector_softplus(x, beta, spec.SOFTPLUS_THRESHOLD).double()
    bound = 3e-7 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 1e-6
    assert ((got - exact).abs() / exact).max().item() <= bound
    nan = cpu_kernel.vector_softplus(torch.full((33,), math.nan), beta, 20.0)
    assert nan.isnan().all()


def test_atan2_form_is_within_3e7_relative(cpu_kernel):
    """Cephes' atanf reduction and polynomial: measured at most 2.0e-7 relative."""
    gen = torch.Generator().manual_seed(0)
    spread = lambda n: torch.exp(torch.randn(n, generator=gen) * 5)  # noqa: E731
    y = torch.randn(400_000, generator=gen) * spread(400_000)
    x = torch.randn(400_000, generator=gen).abs() * spread(400_000)
    x[:16], y[16:32] = 0.0, 0.0  # the axes
    exact = torch.atan2(y.double(), x.double())
    got = cpu_kernel.vector_atan2(y, x).double()
    assert ((got - exact).abs() <= 3e-7 * exact.abs()).all()
