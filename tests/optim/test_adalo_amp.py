"""AdaLo with torch.amp.GradScaler: with and without a closure, and a skipped (inf) step."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from adamhd import AdaLo


def model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(6, 5, generator=g), torch.randn(6, 2, generator=g)) for _ in range(4)]
    return model, data


def state(model, opt):
    return copy.deepcopy(([p.detach() for p in model.parameters()], opt.state_dict()["state"]))


def assert_same(a, b):
    assert all(torch.equal(x, y) for x, y in zip(a[0], b[0]))
    assert a[1].keys() == b[1].keys()
    for i in a[1]:
        assert all(torch.equal(a[1][i][k], b[1][i][k]) for k in a[1][i])


def plain_run():
    model, data = model_and_data()
    opt = AdaLo(model.parameters(), lr=3.0)
    for x, y in data:
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
    return state(model, opt)


@pytest.mark.parametrize("closure", [False, True])
def test_gradscaler_equals_unscaled_training(closure):
    model, data = model_and_data()
    opt = AdaLo(model.parameters(), lr=3.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1000)
    for x, y in data:
        def loss_closure(x=x, y=y):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            scaler.scale(loss).backward()
            return loss

        if closure:
            returned = opt.step(loss_closure, scaler=scaler)
        else:
            loss = loss_closure()
            returned = scaler.step(opt, loss=loss)
        assert torch.is_tensor(returned) and returned.ndim == 0
        scaler.update()
    assert scaler.get_scale() == 2.0**12
    # power-of-two scales unscale exactly: the same numbers as training without a scaler
    assert_same(state(model, opt), plain_run())


@pytest.mark.parametrize("closure", [False, True])
def test_skipped_step_changes_nothing(closure):
    model, data = model_and_data()
    opt = AdaLo(model.parameters(), lr=3.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x, y = data[0]
    scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
    scaler.step(opt, loss=torch.tensor(1.0))
    scaler.update()
    before = state(model, opt)

    def loss_closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(data[1][0]), data[1][1])
        scaler.scale(loss).backward()
        next(model.parameters()).grad[0, 0] = math.inf  # an overflow in one gradient
        return loss

    if closure:
        opt.step(loss_closure, scaler=scaler)
    else:
        scaler.step(opt, loss=loss_closure())
    scaler.update()
    assert scaler.get_scale() == 2.0**9  # seen as skipped
    assert_same(state(model, opt), before)  # weights, m and the loss EMA


def test_gradscaler_step_with_a_closure_explains_the_pattern():
    model, data = model_and_data()
    opt = AdaLo(model.parameters())
    scaler = torch.amp.GradScaler("cpu")
    x, y = data[0]
    scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
    before = state(model, opt)
    with pytest.raises(RuntimeError, match="scaler=scaler"):
        scaler.step(opt, lambda: nn.functional.mse_loss(model(x), y))
    assert_same(state(model, opt), before)
    with pytest.raises(ValueError, match="closure"):
        opt.step(loss=1.0, scaler=scaler)
