"""Lookahead forwards the inner optimizer's step arguments (``loss=`` for AdaLo, GradScaler's
``scaler.step(lookahead, loss=loss)``), and a step the inner optimizer refuses changes nothing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adamhd import AdaLo, Lookahead


def model_and_data(dtype=torch.float32):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).to(dtype)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(5, 4, generator=g, dtype=dtype), torch.randn(5, 2, generator=g,
                                                                     dtype=dtype))
            for _ in range(5)]
    return model, data


def reference_run(k, alpha):
    """AdaLo alone, with the slow weights kept by hand in float64: every k steps
    slow += alpha*(fast - slow), fast = slow."""
    model, data = model_and_data()
    opt = AdaLo(model.parameters(), lr=2.0)
    slow = [p.detach().double().clone() for p in model.parameters()]
    for t, (x, y) in enumerate(data, start=1):
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step(loss=loss.item())
        opt.zero_grad()
        if t % k == 0:
            with torch.no_grad():
                for s, p in zip(slow, model.parameters()):
                    s += alpha * (p.double() - s)
                    p.copy_(s)
    return [p.detach() for p in model.parameters()]


def test_step_forwards_loss_to_adalo():
    model, data = model_and_data()
    opt = Lookahead(AdaLo(model.parameters(), lr=2.0), k=2, alpha=0.5)
    for x, y in data:
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step(loss=loss.item())
        opt.zero_grad()
    for got, want in zip(model.parameters(), reference_run(2, 0.5)):
        torch.testing.assert_close(got.detach(), want, rtol=0, atol=2e-7)


def test_grad_scaler_step_with_loss_equals_unscaled():
    """A power-of-two scale unscales exactly: the scaled run equals the plain one bit for bit."""
    runs = []
    for scaled in (False, True):
        model, data = model_and_data()
        opt = Lookahead(AdaLo(model.parameters(), lr=2.0), k=2)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        for x, y in data:
            loss = nn.functional.mse_loss(model(x), y)
            if scaled:
                scaler.scale(loss).backward()
                scaler.step(opt, loss=loss)
                scaler.update()
            else:
                loss.backward()
                opt.step(loss=loss)
            opt.zero_grad()
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_step_the_inner_optimizer_refuses_changes_nothing():
    """AdaLo without a loss, SGD with a loss: the inner error, no slow weights, no count."""
    for inner, kwargs in ((AdaLo, {}), (torch.optim.SGD, {"loss": 1.0})):
        model, data = model_and_data()
        opt = Lookahead(inner(model.parameters(), lr=0.1), k=1)
        nn.functional.mse_loss(model(data[0][0]), data[0][1]).backward()
        before = [p.detach().clone() for p in model.parameters()]
        with pytest.raises((ValueError, TypeError)):
            opt.step(**kwargs)
        assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
        assert opt.param_groups[0]["lookahead_step"] == 0
        assert not any(opt.state[p] for p in model.parameters())
