"""A step that the base optimizer refuses changes nothing: no decay, no ``delta_mu`` advance.

``with_decoupled_decay(torch.optim.Adam)`` over a sparse-gradient embedding and a dense weight:
Adam raises on the sparse gradient; the wrapper's explicit decay (before the base step) and its
threshold EMA must then be undone / never committed."""

from __future__ import annotations

import pytest
import torch

from adamhd import with_decoupled_decay

FORMS = {
    "explicit": {},
    "proximal": dict(decay_form="proximal"),
    "explicit-cautious": dict(cautious_decay=True),
    "l2": dict(decay="l2"),
}


def snapshot(opt, params):
    state = {i: {k: v.clone() for k, v in opt.state[p].items()} for i, p in enumerate(params)}
    return [p.detach().clone() for p in params], state


def assert_same(before, after):
    (w0, s0), (w1, s1) = before, after
    for a, b in zip(w0, w1):
        assert torch.equal(a, b)
    assert s0.keys() == s1.keys()
    for i in s0:
        assert s0[i].keys() == s1[i].keys()
        for k in s0[i]:
            assert torch.equal(s0[i][k], s1[i][k]), k


@pytest.mark.parametrize("form", list(FORMS))
def test_base_refusing_a_sparse_gradient_changes_nothing(form):
    torch.manual_seed(0)
    emb = torch.nn.Embedding(6, 3, sparse=True)
    dense = torch.nn.Parameter(torch.randn(3, 3))
    params = [emb.weight, dense]
    opt = with_decoupled_decay(torch.optim.Adam)(params, lr=0.1, weight_decay=0.1, **FORMS[form])
    dense.grad = torch.randn(3, 3)
    opt.step()  # a first step (dense only): delta_mu and Adam's state exist for `dense`
    opt.zero_grad()
    (emb(torch.tensor([1, 4])).sum() + (dense * 2).sum()).backward()
    assert emb.weight.grad.is_sparse
    before = snapshot(opt, params)
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert_same(before, snapshot(opt, params))


def test_base_refusing_on_the_first_step_leaves_no_state():
    emb = torch.nn.Embedding(6, 3, sparse=True)
    dense = torch.nn.Parameter(torch.randn(3, 3))
    opt = with_decoupled_decay(torch.optim.Adam)([emb.weight, dense], lr=0.1, weight_decay=0.1)
    (emb(torch.tensor([0])).sum() + dense.sum()).backward()
    before = [emb.weight.detach().clone(), dense.detach().clone()]
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.equal(emb.weight, before[0]) and torch.equal(dense, before[1])
    assert all(not opt.state[p] for p in (emb.weight, dense))


def test_sgd_takes_sparse_gradients_and_decays_float64():
    """A base that accepts sparse gradients (SGD) still steps: p <- (p - tau*clip(p, d)) - lr*g,
    d = 1.5*mean|p| on the first step."""
    emb = torch.nn.Embedding(5, 2, sparse=True).double()
    w0 = emb.weight.detach().clone()
    opt = with_decoupled_decay(torch.optim.SGD)([emb.weight], lr=0.5, weight_decay=0.2)
    emb(torch.tensor([2])).sum().backward()
    opt.step()
    d = 1.5 * w0.abs().mean()
    want = w0 - 0.5 * 0.2 * w0.clamp(-d, d)
    want[2] -= 0.5
    torch.testing.assert_close(emb.weight.detach(), want, rtol=0, atol=1e-15)


def test_sparse_gradient_in_a_later_group_changes_no_earlier_group():
    """torch's NAdam steps group 0 before it meets group 1's sparse gradient (found by
    tests/fuzz): the wrapper refuses torch's non-sparse bases up front, so nothing moves."""
    emb = torch.nn.Embedding(6, 3, sparse=True)
    dense = torch.nn.Parameter(torch.randn(3, 3))
    opt = with_decoupled_decay(torch.optim.NAdam)(
        [{"params": [dense]}, {"params": [emb.weight]}], lr=0.1, weight_decay=0.1)
    (emb(torch.tensor([2])).sum() + dense.sum()).backward()
    before = snapshot(opt, [dense, emb.weight])
    with pytest.raises(RuntimeError, match="NAdam does not support sparse gradients"):
        opt.step()
    assert_same(before, snapshot(opt, [dense, emb.weight]))
