"""Found by tests/fuzz: a wrapped base's float32 scalar statistics (NAdam's ``mu_product``) must
stay float32 across ``load_state_dict`` for bf16/fp16 weights, as ``delta_mu`` does (torch casts
every floating state tensor to the weight's dtype), so that a resumed run is bit-exact."""

from __future__ import annotations

import io

import pytest
import torch

from adamhd import NAdamHD, RAdamHD


def train(cls, steps, reload_at=None):
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 3, generator=g).to(torch.bfloat16))
    opt = cls([p], lr=1e-2, weight_decay=0.1)
    for t in range(steps):
        if t == reload_at:
            buffer = io.BytesIO()
            torch.save(opt.state_dict(), buffer)
            buffer.seek(0)
            p = torch.nn.Parameter(p.detach().clone())
            opt = cls([p], lr=1e-2, weight_decay=0.1)
            opt.load_state_dict(torch.load(buffer))
        p.grad = torch.randn(4, 3, generator=g).to(torch.bfloat16)
        opt.step()
    return p.detach(), opt.state[p]


@pytest.mark.parametrize("cls", [NAdamHD, RAdamHD])
def test_bf16_resume_is_bit_exact_and_scalars_stay_float32(cls):
    want_p, want_state = train(cls, 3)
    got_p, got_state = train(cls, 3, reload_at=1)
    assert torch.equal(got_p, want_p)
    assert want_state.keys() == got_state.keys()
    for key, value in want_state.items():
        assert got_state[key].dtype == value.dtype, key
        assert torch.equal(got_state[key], value), key
