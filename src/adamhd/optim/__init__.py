"""Optimizers other than ``AdamHD``: SGDW and the Huber-decay presets of torch's optimizers."""

from adamhd.optim.presets import AdafactorHD, MuonHD, NAdamHD, RAdamHD
from adamhd.optim.sgdw import SGDW, MomentumSGD

__all__ = ["SGDW", "AdafactorHD", "MomentumSGD", "MuonHD", "NAdamHD", "RAdamHD"]
