"""AdaMomentum and FCAdam (G-L fractional gradient) beyond the shared harness (tests/optim/
test_common.py, test_reference.py and test_wrapped.py run both through `common.CASES`): the
references of tests/optim/reference.py on more options, the paper's special cases, the dropped
memory term, the ring buffer, and resume of the decay-wrapped classes."""

from __future__ import annotations

import pytest
import torch

from adamhd import AdaMomentum, FCAdam, with_decoupled_decay
from tests.optim import common, reference


def _run(opt_cls, shape, n, **kw):
    p = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = common.grads_for(shape, n, seed=2)
    start = p.clone()
    p.requires_grad_()
    opt = opt_cls([p], **kw)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return start, grads, p.detach(), opt.state[p]


def _close(got, want, atol=1e-14):
    torch.testing.assert_close(got, want, rtol=1e-12, atol=atol)


@pytest.mark.parametrize("shape", [(5, 7), ()])
@pytest.mark.parametrize("eps", [1e-8, 1e-3])
def test_adamomentum_state_matches_the_paper(shape, eps):
    kw = dict(lr=0.05, betas=(0.8, 0.95), eps=eps, weight_decay=0.1)
    p0, grads, p, state = _run(AdaMomentum, shape, 12, **kw)
    want, ref_state = reference.adamomentum(p0, grads, **kw)
    _close(p, want)
    _close(state["exp_avg"], ref_state["exp_avg"])
    _close(state["exp_avg_sq"], ref_state["exp_avg_sq"], atol=1e-16)
    assert float(state["step"]) == 12


def test_adamomentum_has_adams_m_and_the_momentums_v():
    p = torch.ones(6, dtype=torch.float64, requires_grad=True)
    q = torch.ones(6, dtype=torch.float64, requires_grad=True)
    a, b = AdaMomentum([p], lr=0.1, eps=1e-12), torch.optim.Adam([q], lr=0.1)
    g = common.grads_for((6,), 1, seed=5)[0]
    p.grad, q.grad = g.clone(), g.clone()
    a.step()
    b.step()
    m = a.state[p]["exp_avg"]
    torch.testing.assert_close(m, b.state[q]["exp_avg"], rtol=1e-15, atol=0)
    # step 1: m = 0.1*g, v = 0.001*m**2 + eps, so u = m_hat/sqrt(v_hat) = g/sqrt(m**2 + 1000*eps)
    # ~ 10*sign(g): ten times Adam's first step sign(g)
    _close(a.state[p]["exp_avg_sq"], 0.001 * m * m + 1e-12, atol=1e-20)
    torch.testing.assert_close((1 - p) / 0.1, torch.sign(g) * 10 / (1 + 1e-12 / (0.001 * m * m))
                               .sqrt(), rtol=1e-9, atol=0)


def test_gl_weights_follow_the_recursion_and_vanish_at_alpha_one():
    from adamhd.optim.fcadam import gl_weights

    for alpha in (0.3, 0.9, 1.0):
        want = [reference.gl_weight(alpha, j) for j in range(1, 11)]
        assert gl_weights(alpha, 10) == pytest.approx(want, rel=1e-13, abs=1e-15)
    assert gl_weights(0.9, 2) == pytest.approx([1 - 1.9 / 2, (1 - 1.9 / 2) * (1 - 1.9 / 3)])
    assert gl_weights(1.0, 4) == [0.0] * 4


def _dropped(seed, t, k):
    """The documented draw: generator seeded with seed*1_000_003 + t, j = randint(K) + 1."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + t)
    return int(torch.randint(k, (), generator=gen)) + 1


@pytest.mark.parametrize("drop", [False, True])
@pytest.mark.parametrize("shape", [(4, 5), ()])
def test_fcadam_matches_the_paper(drop, shape):
    k, n = 4, 9
    kw = dict(lr=0.05, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.1, alpha=0.6, history=k,
              drop=drop, seed=3)
    p0, grads, p, state = _run(FCAdam, shape, n, **kw)
    dropped = {t: _dropped(3, t, k) for t in range(1, n + 1)}
    assert len(set(dropped.values())) > 1  # the dropped term moves
    want, ref_state = reference.fcadam(p0, grads, **kw, dropped=dropped)
    _close(p, want)
    _close(state["exp_avg"], ref_state["exp_avg"])
    _close(state["exp_avg_sq"], ref_state["exp_avg_sq"], atol=1e-16)
    if drop:  # dropping changes the result
        other, _ = reference.fcadam(p0, grads, **{**kw, "drop": False})
        assert not torch.allclose(other, want, rtol=1e-9, atol=0)
    # the ring buffer holds exactly the last K raw gradients
    held = sorted(tuple(h.reshape(-1).tolist()) for h in state["grad_history"])
    assert held == sorted(tuple(g.reshape(-1).tolist()) for g in grads[-k:])


def test_fcadam_with_alpha_one_is_torch_adam():
    p = torch.linspace(-1, 1, 8, dtype=torch.float64, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    a, b = FCAdam([p], lr=0.1, alpha=1.0), torch.optim.Adam([q], lr=0.1)
    for g in common.grads_for((8,), 5, seed=7):
        p.grad, q.grad = g.clone(), g.clone()
        a.step()
        b.step()
    torch.testing.assert_close(p, q, rtol=1e-14, atol=1e-15)


def test_fcadam_refuses_a_changed_history_before_any_change():
    p = torch.ones(3, requires_grad=True)
    opt = FCAdam([p], history=3)
    p.grad = torch.ones(3)
    opt.step()
    opt.param_groups[0]["history"] = 5
    before = (p.detach().clone(), opt.state[p]["exp_avg"].clone())
    with pytest.raises(ValueError, match="history=5"):
        opt.step()
    assert torch.equal(p, before[0]) and torch.equal(opt.state[p]["exp_avg"], before[1])
    with pytest.raises(ValueError, match="history"):
        FCAdam([p], history=0)


@pytest.mark.parametrize("cls", [AdaMomentum, FCAdam])
def test_wrapped_with_adaptive_huber_resumes_bit_exactly(cls):
    wrapped = with_decoupled_decay(cls)
    grads = common.grads_for((6, 4), 6, seed=9, dtype=torch.float32)

    def make():
        p = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)).requires_grad_()
        return p, wrapped([p], lr=0.02, weight_decay=0.1, decay="huber")

    (p, opt), (q, half), (r, resumed) = make(), make(), make()
    for i, g in enumerate(grads):
        p.grad = g.clone()
        opt.step()
        if i < 3:
            q.grad = g.clone()
            half.step()
    with torch.no_grad():
        r.copy_(q)
    resumed.load_state_dict(half.state_dict())
    for g in grads[3:]:
        r.grad = g.clone()
        resumed.step()
    assert torch.equal(p, r)
    common.assert_state_equal(opt.state_dict()["state"], resumed.state_dict()["state"])
