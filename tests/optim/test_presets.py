"""The named Huber-decay presets: importable, picklable, the base optimizer plus the rule."""

from __future__ import annotations

import pickle

import pytest
import torch

import adamhd
from adamhd import AdafactorHD, MuonHD, NAdamHD, RAdamHD, with_decoupled_decay

PRESETS = [
    (NAdamHD, torch.optim.NAdam),
    (RAdamHD, torch.optim.RAdam),
    (AdafactorHD, torch.optim.Adafactor),
    (MuonHD, torch.optim.Muon),
]


def matrices(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 4, generator=g).requires_grad_(), torch.randn(4, 3, generator=g)]


def train(opt, params, steps=3):
    for t in range(steps):
        g = torch.Generator().manual_seed(t)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


@pytest.mark.parametrize("preset, base", PRESETS, ids=[p.__name__ for p, _ in PRESETS])
def test_preset_is_the_wrapped_base_with_huber_defaults(preset, base):
    assert getattr(adamhd, preset.__name__) is preset
    assert issubclass(preset, with_decoupled_decay(base)) and issubclass(preset, base)
    params = [p.requires_grad_() for p in matrices()]
    opt = preset(params, lr=1e-2)
    assert opt.defaults["decay"] == "huber" and opt.defaults["delta"] == "adaptive"
    train(opt, params)
    assert all("delta_mu" in opt.state[p] for p in params)

    same = [p.requires_grad_() for p in matrices()]
    generic = with_decoupled_decay(base)(same, lr=1e-2)
    train(generic, same)
    assert all(torch.equal(a, b) for a, b in zip(params, same))

    back = pickle.loads(pickle.dumps(opt))
    assert type(back) is preset
    assert pickle.loads(pickle.dumps(preset)) is preset


def test_muonhd_replaces_muons_decay():
    """MuonHD's weight_decay defaults to Muon's 0.1; with decay="l2" it is Muon bit for bit, with
    the default Huber rule it decays large weights less than Muon's L2 does."""
    ours, l2, muon = ([p.requires_grad_() for p in matrices()] for _ in range(3))
    opt = MuonHD(ours, lr=5e-2)
    assert opt.defaults["weight_decay"] == 0.1
    train(opt, ours)
    train(MuonHD(l2, lr=5e-2, decay="l2"), l2)
    train(torch.optim.Muon(muon, lr=5e-2), muon)
    assert all(torch.equal(a, b) for a, b in zip(l2, muon))
    assert not torch.equal(ours[0], muon[0])


def test_muonhd_keeps_muons_2d_check():
    with pytest.raises(ValueError, match="2D"):
        MuonHD([torch.zeros(3, requires_grad=True)])


def test_adafactorhd_l2_decays_before_the_relative_step_size():
    """The wrapper's explicit decay acts before the base step, so Adafactor's relative step size
    reads rms of the decayed weights: bit for bit ``p*(1 - lr*wd)`` then ``Adafactor(wd=0)``.
    torch's own ``weight_decay`` reads rms(p) first: a different, close step (documented)."""
    ours, ref, torchs = ([p.requires_grad_() for p in matrices()] for _ in range(3))
    train(AdafactorHD(ours, lr=1e-2, decay="l2", weight_decay=0.5), ours)
    base = torch.optim.Adafactor(ref, lr=1e-2)
    for t in range(3):
        g = torch.Generator().manual_seed(t)
        with torch.no_grad():
            for p in ref:
                p.grad = torch.randn(p.shape, generator=g)
                p.mul_(1 - 1e-2 * 0.5)
        base.step()
    train(torch.optim.Adafactor(torchs, lr=1e-2, weight_decay=0.5), torchs)
    for a, b, c in zip(ours, ref, torchs):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
        torch.testing.assert_close(a, c, rtol=1e-2, atol=1e-3)
