"""The fused CPU op over whole lists: batching, GradScaler gradients, the threshold's non-finite
guard, thread-count independence, and torch.compile (numbers, no timings)."""

import math

import pytest
import torch

from adamhd import AdamHD
from adamhd.decay import HuberDecay
from adamhd.hyper import AdamStep
from adamhd.kernels import fused_adamhd
from tests.kernels.conftest import clone_params, grads_for

# many tiny tensors (batched into shared chunks), empty and 0-dim ones, and a few over one chunk
LIST_SHAPES = [(3,), (0,), (), (1,), (17, 5), (0, 4)] * 30 + [(70001,), (40000,), (129, 257)]


def _state(ps, adaptive=True):
    return dict(
        ms=[torch.zeros_like(p) for p in ps], vs=[torch.zeros_like(p) for p in ps],
        xs=[torch.zeros_like(p) for p in ps], steps=[torch.zeros(()) for _ in ps],
        mus=[p.detach().abs().mean(dtype=torch.float32).nan_to_num() for p in ps]
        if adaptive else [],
    )


@pytest.mark.parametrize("kw", [dict(), dict(decay=HuberDecay(form="proximal"), amsgrad=True),
                                dict(decay=HuberDecay(delta=0.05), maximize=True)])
def test_list_call_equals_per_tensor_calls_bit_for_bit(cpu_kernel, kw):
    """One call over the list gives exactly what one call per tensor gives."""
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=gen) for s in LIST_SHAPES]
    qs = [p.clone() for p in ps]
    sa, sb = _state(ps), _state(qs)
    args = dict(decay=HuberDecay(), amsgrad=False, beta1=0.9, beta2=0.999, lr=1e-2,
                weight_decay=0.1, eps=1e-8, maximize=False)
    hyper = AdamStep(**{**args, **kw})
    for _ in range(3):
        gs = [torch.randn(p.shape, generator=gen) for p in ps]
        fused_adamhd(ps, [g.clone() for g in gs], sa["ms"], sa["vs"], sa["xs"], sa["steps"],
                     sa["mus"], hyper)
        for i in range(len(qs)):
            fused_adamhd([qs[i]], [gs[i].clone()], [sb["ms"][i]], [sb["vs"][i]], [sb["xs"][i]],
                         [sb["steps"][i]], [sb["mus"][i]], hyper)
    for a, b in zip(ps + sa["ms"] + sa["vs"] + sa["mus"], qs + sb["ms"] + sb["vs"] + sb["mus"]):
        assert torch.equal(a, b)


def test_groups_of_mixed_dtypes_and_params_without_grads(cpu_kernel):
    """Separate groups per dtype, parameters without gradients: as the single-tensor path."""
    from tests.kernels.test_fused_cpu import assert_states_close

    gen = torch.Generator().manual_seed(2)
    shapes = [(0,), (), (5,), (33, 17), (70001,)]
    p32 = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    p64 = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in shapes]
    idle = [torch.nn.Parameter(torch.randn(4, generator=gen)) for _ in range(2)]
    ref32, ref64, ref_idle = clone_params(p32), clone_params(p64), clone_params(idle)

    def run(a, b, c, **kw):
        opt = AdamHD([dict(params=a + c[:1]), dict(params=b + c[1:], decay_form="proximal")],
                     lr=1e-2, weight_decay=0.3, **kw)
        g = torch.Generator().manual_seed(5)
        for _ in range(6):
            for p, x in zip(a + b, grads_for(a + b, g)):
                p.grad = x.to(p.dtype)
            opt.step()
        return opt

    opt = run(p32, p64, idle)
    ref = run(ref32, ref64, ref_idle, foreach=False)
    assert set(opt.paths.values()) == {"fused"}
    assert_states_close(opt, p32, ref, ref32, rtol=2e-5, atol=2e-6)
    assert_states_close(opt, p64, ref, ref64, rtol=1e-10, atol=1e-12)
    for a, b in zip(idle, ref_idle):
        assert torch.equal(a, b) and a not in opt.state


def test_result_does_not_depend_on_thread_count(cpu_kernel):
    def run(threads):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            gen = torch.Generator().manual_seed(0)
            ps = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(300001,), (9,)]]
            opt = AdamHD(ps, lr=1e-2, weight_decay=0.2)
            for _ in range(4):
                for p, g in zip(ps, grads_for(ps, gen)):
                    p.grad = g.float()
                opt.step()
            return ps + [opt.state[p]["delta_mu"] for p in ps]
        finally:
            torch.set_num_threads(before)

    assert all(torch.equal(a, b) for a, b in zip(run(1), run(2)))


def test_grad_scaler_leaves_gradients_as_torch_fused_adamw_does(cpu_kernel):
    """After scaler.step the gradients are unscaled in place (grad/scale), as torch's fused AdamW
    leaves them; a step with inf/nan changes nothing and leaves them scaled (as torch's)."""
    def run(make):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
        opt = make(model.parameters())
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
        record = []
        for step in range(4):
            loss = model(torch.randn(16, 8)).pow(2).mean()
            if step == 2:
                loss = loss * math.inf
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaled = [p.grad.clone() for p in model.parameters()]
            scale = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            record.append((scaled, scale, [p.grad.clone() for p in model.parameters()]))
        return record

    for make in (lambda q: AdamHD(q, lr=1e-2, fused=True),
                 lambda q: torch.optim.AdamW(q, lr=1e-2, fused=True)):
        for step, (scaled, scale, after) in enumerate(run(make)):
            for x, y in zip(scaled, after):
                expected = x if step == 2 else x / scale
                torch.testing.assert_close(y, expected, rtol=0, atol=0, equal_nan=True)
                assert (step == 2) != bool(torch.isfinite(y).all())


def _mu_reference(a_values, beta):
    """mu_t with the non-finite guard (docs/decay.md), in float64."""
    mu = math.nan
    out = []
    for a in a_values:
        if math.isfinite(a):
            mu = a if not math.isfinite(mu) else mu + (1 - beta) * (a - mu)
        out.append(mu)
    return out


def test_non_finite_gradient_costs_one_element(cpu_kernel):
    """A NaN gradient element poisons that element only; mu skips the NaN statistic, and after
    nan_to_num_ the tensor trains on with a finite threshold."""
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(1000, generator=gen, dtype=torch.float64))
    opt = AdamHD([p], lr=1e-2, weight_decay=0.5, delta_beta=0.9)
    a_values, mus = [], []
    for step in range(6):
        g = torch.randn(1000, generator=gen, dtype=torch.float64)
        if step == 1:
            g[7] = math.nan
        if step == 4:
            with torch.no_grad():
                p.nan_to_num_(0.0)
        a_values.append(p.detach().abs().mean().item())
        p.grad = g
        opt.step()
        mus.append(opt.state[p]["delta_mu"].item())
        finite = torch.isfinite(p.detach())
        assert finite.sum() >= 999 and (step < 1 or step >= 4 or not finite[7])
    expected = _mu_reference(a_values, 0.9)
    assert not math.isfinite(a_values[2]) and not math.isfinite(a_values[3])
    for got, want in zip(mus, expected):
        assert got == pytest.approx(want, rel=1e-12)
    assert torch.isfinite(p.detach()).sum() == 999  # element 7: its moments stay NaN (as AdamW)


def test_non_finite_mu_takes_the_statistic(cpu_kernel):
    p = torch.nn.Parameter(torch.full((10,), 2.0))
    opt = AdamHD([p], lr=1e-2, weight_decay=0.5)
    p.grad = torch.ones(10)
    opt.step()
    opt.state[p]["delta_mu"].fill_(math.inf)
    before = p.detach().abs().mean().item()
    p.grad = torch.ones(10)
    opt.step()
    assert opt.state[p]["delta_mu"].item() == pytest.approx(before, rel=1e-6)


def test_compiled_step_graph_breaks_and_result(cpu_kernel):
    """torch.compile(opt.step) on the default path: no more graph breaks than torch's fused AdamW,
    and the same numbers as the eager step, bit for bit."""
    from torch._dynamo.utils import counters

    def run(make, compiled):
        torch._dynamo.reset()
        counters.clear()
        gen = torch.Generator().manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(33, 17), (100,), ()]]
        opt = make(ps)
        step = torch.compile(opt.step) if compiled else opt.step
        for _ in range(3):
            for p, g in zip(ps, grads_for(ps, gen)):
                p.grad = g.float()
            step()
        return ps, opt, sum(counters["graph_break"].values())

    _, _, adamw_breaks = run(lambda q: torch.optim.AdamW(q, fused=True), True)
    ps, opt, breaks = run(lambda q: AdamHD(q, lr=1e-2), True)
    ref_ps, ref, _ = run(lambda q: AdamHD(q, lr=1e-2), False)
    assert opt.paths[0] == "fused"
    assert breaks <= adamw_breaks, (breaks, adamw_breaks)
    for p, q in zip(ps, ref_ps):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["delta_mu"], ref.state[q]["delta_mu"])
