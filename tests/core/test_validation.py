"""Bad input gets a clear error naming what is wrong, and changes nothing."""

import math

import pytest
import torch

from adamhd import AdamHD


def param():
    return torch.randn(3, requires_grad=True)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(lr=-1e-3), "lr"),
        (dict(lr=math.nan), "lr"),
        (dict(lr=torch.tensor([1e-3, 2e-3])), "lr"),
        (dict(lr="fast"), "lr"),
        (dict(betas=(1.0, 0.999)), "betas[0]"),
        (dict(betas=(0.9, -0.1)), "betas[1]"),
        (dict(betas=(0.9,)), "betas"),
        (dict(eps=-1e-8), "eps"),
        (dict(eps=True), "eps must be a float"),
        (dict(eps=torch.tensor(1e-8)), "eps must be a float .* got a Tensor"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(weight_decay=math.inf), "weight_decay"),
        (dict(delta=0.0), "delta"),
        (dict(delta=-1.0), "delta"),
        (dict(delta="auto"), "delta"),
        (dict(delta=True), "delta"),
        (dict(delta_scale=0.0), "delta_scale"),
        (dict(delta_scale=math.inf), "delta_scale"),
        (dict(delta_beta=1.0), "delta_beta"),
        (dict(delta_beta=-0.5), "delta_beta"),
        (dict(decay_form="implicit"), "decay_form"),
    ],
)
def test_invalid_hyperparameters_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name.replace("[", r"\[").replace("]", r"\]")):
        AdamHD([param()], **kwargs)


def test_invalid_value_in_a_param_group_is_rejected_and_not_added():
    opt = AdamHD([param()])
    with pytest.raises(ValueError, match="delta_beta"):
        opt.add_param_group({"params": [param()], "delta_beta": 2.0})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match="decay_form"):
        AdamHD([{"params": [param()], "decay_form": "nope"}])


def test_valid_edge_values_are_accepted():
    AdamHD([param()], lr=0.0, eps=0.0, weight_decay=0.0, delta=math.inf, delta_beta=0.0)
    AdamHD([param()], lr=torch.tensor(1e-3), betas=(0.0, 0.0), delta=1e-12)


def test_sparse_gradient_raises_before_anything_changes():
    dense = torch.randn(4, requires_grad=True)
    table = torch.nn.Embedding(5, 3, sparse=True)
    opt = AdamHD([dense, *table.parameters()], lr=0.1)
    dense.grad = torch.ones(4)
    table(torch.tensor([1, 2])).sum().backward()
    before = dense.detach().clone(), table.weight.detach().clone()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    assert torch.equal(dense.detach(), before[0]) and torch.equal(table.weight, before[1])
    assert len(opt.state) == 0


def test_complex_parameters_are_rejected():
    p = torch.randn(3, dtype=torch.complex64, requires_grad=True)
    opt = AdamHD([p])
    p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="complex"):
        opt.step()


def test_explicit_fused_that_cannot_be_honoured_raises():
    from adamhd import kernels

    p = param()
    reason = kernels.fused_unsupported_reason(p)
    if reason is None:
        # A build with a CPU kernel: ask for something no kernel takes instead.
        p = torch.randn(3, dtype=torch.float64, requires_grad=True).to(torch.int64)
        reason = kernels.fused_unsupported_reason(p)
    assert reason is not None
    with pytest.raises(RuntimeError, match="fused=True cannot be honoured"):
        AdamHD([p], fused=True)


@pytest.mark.parametrize(
    "kwargs",
    [dict(fused=True, differentiable=True), dict(fused=True, foreach=True),
     dict(foreach=True, differentiable=True)],
)
def test_incompatible_flags_raise(kwargs):
    with pytest.raises(RuntimeError):
        AdamHD([param()], **kwargs)
