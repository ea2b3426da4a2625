"""torch.compile: no recompilation when a scheduler changes lr every step; capturable=True."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.testing import CompileCounter

from adamhd import AdamHD


def setup(lr, **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 2))
    opt = AdamHD(model.parameters(), lr=lr, weight_decay=0.1, **kwargs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    return model, opt, sched


def data(n=5):
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(4, 8, generator=g), torch.randn(4, 2, generator=g)) for _ in range(n)]


def eager_weights(lr, **kwargs):
    model, opt, sched = setup(lr, **kwargs)
    for x, y in data():
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def compiled_opt_step_frames(lr, backend, **kwargs):
    """Train with a compiled ``opt.step``; return the frames compiled after each step."""
    torch._dynamo.reset()
    model, opt, sched = setup(lr, **kwargs)

    @torch.compile(backend=backend)
    def opt_step():
        opt.step()

    frames = []
    for x, y in data():
        nn.functional.mse_loss(model(x), y).backward()
        opt_step()
        sched.step()
        opt.zero_grad()
        frames.append(backend.frame_count)
    return frames, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(
    "kwargs", [dict(foreach=True, capturable=True), dict(foreach=False)], ids=["foreach", "single"]
)
def test_tensor_lr_does_not_recompile_when_scheduler_changes_it(kwargs):
    """(A Tensor lr with foreach needs capturable=True, as in torch's AdamW: tests/core.)"""
    frames, got = compiled_opt_step_frames(torch.tensor(0.01), CompileCounter(), **kwargs)
    # The first two calls compile (no state yet, then state); later lrs reuse the graph.
    assert frames[1] == frames[-1], frames
    for g, w in zip(got, eager_weights(torch.tensor(0.01), **kwargs)):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="inductor on CPU needs a C++ compiler")
@pytest.mark.parametrize("foreach", [True, False])
def test_inductor_compiled_train_step_capturable(foreach):
    """A whole compiled training step (forward, backward, AdamHD step), capturable=True."""
    torch._dynamo.reset()
    kwargs = dict(foreach=foreach, capturable=True)
    model, opt, sched = setup(torch.tensor(0.01), **kwargs)
    ref_model = copy.deepcopy(model)

    @torch.compile(backend="inductor")
    def train_step(x, y):
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    graphs = []
    for x, y in data():
        train_step(x, y)
        sched.step()
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert graphs[1] == graphs[-1], graphs
    want = eager_weights(torch.tensor(0.01), **kwargs)
    assert ref_model is not model
    for g, w in zip(model.parameters(), want):
        torch.testing.assert_close(g.detach(), w, atol=1e-5, rtol=1e-4)
