"""Optimizers other than AdamHD, and optimizer wrappers: SGDW, the Huber-decay presets of
torch's optimizers, Lookahead."""

from adamhd.optim.lookahead import Lookahead
from adamhd.optim.presets import AdafactorHD, MuonHD, NAdamHD, RAdamHD
from adamhd.optim.sgdw import SGDW, MomentumSGD

__all__ = ["SGDW", "AdafactorHD", "Lookahead", "MomentumSGD", "MuonHD", "NAdamHD", "RAdamHD"]
