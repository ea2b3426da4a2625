"""AMP: GradScaler (a skipped step changes nothing), bf16 autocast, bf16 parameters."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from adamhd import AdamHD, kernels


def make_model(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)).to(dtype)


def data(n=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(5)
    return [
        (torch.randn(6, 8, generator=g).to(dtype), torch.randn(6, 4, generator=g).to(dtype))
        for _ in range(n)
    ]


def snapshot(model, opt):
    return copy.deepcopy(([p.detach() for p in model.parameters()], opt.state_dict()["state"]))


def assert_same(a, b):
    (pa, sa), (pb, sb) = a, b
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert sa.keys() == sb.keys()
    for i in sa:
        assert sa[i].keys() == sb[i].keys()
        for key in sa[i]:
            assert torch.equal(sa[i][key], sb[i][key]), (i, key)


@pytest.mark.parametrize("path", ["foreach", "single", "fused"])
def test_gradscaler_skipped_step_changes_nothing(path):
    model = make_model()
    if path == "fused":
        reason = kernels.fused_unsupported_reason(next(model.parameters()))
        if reason is not None:
            pytest.skip(reason)
        opt = AdamHD(model.parameters(), lr=1e-2, weight_decay=0.5, fused=True)
    else:
        opt = AdamHD(model.parameters(), lr=1e-2, weight_decay=0.5, foreach=path == "foreach")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    (x, y), (x2, y2) = data(2)
    scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
    scaler.step(opt)
    scaler.update()
    opt.zero_grad()
    before = snapshot(model, opt)
    assert "delta_mu" in before[1][0]

    scaler.scale(nn.functional.mse_loss(model(x2), y2)).backward()
    next(model.parameters()).grad[0, 0] = math.inf  # an overflow in one gradient
    scaler.step(opt)
    scaler.update()
    opt.zero_grad()
    assert scaler.get_scale() == 2.0**9  # the step was seen as skipped
    assert_same(snapshot(model, opt), before)  # weights, step, moments, threshold EMA
    assert opt.paths == {0: path}


def test_gradscaler_without_overflow_matches_unscaled_training():
    scaled, plain = make_model(), make_model()
    opt_s = AdamHD(scaled.parameters(), lr=1e-2, weight_decay=0.5)
    opt_p = AdamHD(plain.parameters(), lr=1e-2, weight_decay=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    for x, y in data():
        scaler.scale(nn.functional.mse_loss(scaled(x), y)).backward()
        scaler.step(opt_s)
        scaler.update()
        opt_s.zero_grad()
        nn.functional.mse_loss(plain(x), y).backward()
        opt_p.step()
        opt_p.zero_grad()
    for a, b in zip(scaled.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)


def train(model, opt, batches, autocast=False):
    for x, y in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = nn.functional.mse_loss(model(x).float(), y.float())
        loss.backward()
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("foreach", [True, False])
def test_bf16_autocast_infinite_delta_is_adamw(foreach):
    kw = dict(lr=1e-2, weight_decay=0.1, foreach=foreach)
    m1, m2 = make_model(), make_model()
    got = train(m1, AdamHD(m1.parameters(), delta=math.inf, **kw), data(), autocast=True)
    want = train(m2, torch.optim.AdamW(m2.parameters(), **kw), data(), autocast=True)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_bf16_autocast_adaptive_close_to_fp32():
    kw = dict(lr=1e-2, weight_decay=0.5)
    m1, m2 = make_model(), make_model()
    got = train(m1, AdamHD(m1.parameters(), **kw), data(), autocast=True)
    want = train(m2, AdamHD(m2.parameters(), **kw), data(), autocast=False)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, atol=3e-2, rtol=0)
    assert max((g - w).abs().max().item() for g, w in zip(got, want)) > 0  # autocast did act


@pytest.mark.parametrize("foreach", [True, False])
def test_bf16_parameters(foreach):
    kw = dict(lr=1e-2, weight_decay=0.1, foreach=foreach)
    batches = data(dtype=torch.bfloat16)
    m1, m2 = make_model(torch.bfloat16), make_model(torch.bfloat16)
    got = train(m1, AdamHD(m1.parameters(), delta=math.inf, **kw), batches)
    want = train(m2, torch.optim.AdamW(m2.parameters(), **kw), batches)
    assert all(torch.equal(g, w) for g, w in zip(got, want))

    m3, m4 = make_model(torch.bfloat16), make_model(torch.float32)
    opt = AdamHD(m3.parameters(), **{**kw, "weight_decay": 0.5})
    got = train(m3, opt, batches)
    want = train(m4, AdamHD(m4.parameters(), **{**kw, "weight_decay": 0.5}), data())
    for p in m3.parameters():
        assert p.dtype == torch.bfloat16
        assert opt.state[p]["delta_mu"].dtype == torch.float32  # threshold kept in fp32
    for g, w in zip(got, want):
        torch.testing.assert_close(g.float(), w, atol=5e-2, rtol=0)
