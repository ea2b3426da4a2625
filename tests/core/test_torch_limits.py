"""The limits where AdamHD must be torch's AdamW or Adam."""

import math

import pytest
import torch

from adamhd import AdamHD
from tests.core.conftest import available_paths, path_kwargs


def run_pair(ours, theirs, dtype, steps=30, shapes=((16, 8), (8,), (3, 3, 3))):
    torch.manual_seed(0)
    a = [torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes]
    b = [x.detach().clone().requires_grad_() for x in a]
    opt_a, opt_b = ours(a), theirs(b)
    sched_a = torch.optim.lr_scheduler.CosineAnnealingLR(opt_a, T_max=steps)
    sched_b = torch.optim.lr_scheduler.CosineAnnealingLR(opt_b, T_max=steps)
    for _ in range(steps):
        for x, y in zip(a, b):
            g = torch.randn_like(x)
            x.grad, y.grad = g, g.clone()
        opt_a.step()
        opt_b.step()
        sched_a.step()
        sched_b.step()
    return a, b


@pytest.mark.parametrize("path", available_paths())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("extra", [{}, {"amsgrad": True}, {"maximize": True}])
def test_infinite_delta_is_adamw(path, dtype, extra):
    kw = dict(lr=1e-2, weight_decay=0.1, **extra)
    # fused: torch's fused AdamW, the one that also computes bf16 in fp32
    torch_kw = {
        "single": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)
    }[path]
    a, b = run_pair(
        lambda ps: AdamHD(ps, delta=math.inf, **kw, **path_kwargs(path)),
        lambda ps: torch.optim.AdamW(ps, **kw, **torch_kw),
        dtype,
    )
    for x, y in zip(a, b):
        if path == "fused":
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(x, y), (x - y).abs().max()


@pytest.mark.parametrize("path", available_paths())
@pytest.mark.parametrize("form", ["explicit", "proximal"])
@pytest.mark.parametrize("delta", ["adaptive", 0.01])
def test_zero_weight_decay_is_adam(path, form, delta):
    kw = dict(lr=3e-3, betas=(0.85, 0.99), eps=1e-7)
    torch_kw = {"single": dict(foreach=False), "foreach": dict(foreach=True), "fused": {}}[path]
    a, b = run_pair(
        lambda ps: AdamHD(ps, weight_decay=0.0, delta=delta, decay_form=form, **kw,
                          **path_kwargs(path)),
        lambda ps: torch.optim.Adam(ps, **kw, **torch_kw),
        torch.float32,
    )
    for x, y in zip(a, b):
        if path == "fused":
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(x, y)


def test_huber_differs_from_adamw_where_weights_exceed_delta():
    """A finite threshold must actually change the trajectory of large weights (and only those)."""
    p = torch.tensor([0.01, -0.02, 5.0, -7.0], requires_grad=True)
    q = p.detach().clone().requires_grad_()
    ours = AdamHD([p], lr=0.1, weight_decay=0.5, delta=1.0)
    adamw = torch.optim.AdamW([q], lr=0.1, weight_decay=0.5)
    p.grad = torch.zeros(4)
    q.grad = torch.zeros(4)
    ours.step()
    adamw.step()
    # Small weights: the same L2 pull p*(1 - lr*wd). Large ones: a pull of lr*wd*delta only.
    torch.testing.assert_close(p[:2], q[:2])
    torch.testing.assert_close(p[2:].detach(), torch.tensor([5.0 - 0.05, -7.0 + 0.05]))
