"""The optimizer family: ``AdamHD`` (the package ``adamhd.optim.adamhd``), SGDW and the
Huber-decay presets of torch's optimizers, Lookahead, and the survey's optimizers (NSGDA, AdaLo,
Adafactor, SMMF, SM3; see docs/optimizers.md) and momentum rules (docs/momentum.md), each of the
latter one plain math function and a thin class."""

from adamhd.optim.adafactor import Adafactor
from adamhd.optim.adalo import AdaLo
from adamhd.optim.adamem import AdaptiveMemorySGD
from adamhd.optim.adamhd import AdamHD
from adamhd.optim.adamomentum import AdaMomentum
from adamhd.optim.amos import Amos
from adamhd.optim.fcadam import FCAdam
from adamhd.optim.lookahead import Lookahead
from adamhd.optim.nsgda import NSGDA
from adamhd.optim.presets import AdafactorHD, MuonHD, NAdamHD, RAdamHD
from adamhd.optim.sgdw import SGDW, MomentumSGD
from adamhd.optim.sm3 import SM3
from adamhd.optim.smmf import SMMF

__all__ = [
    "NSGDA",
    "SGDW",
    "SM3",
    "SMMF",
    "AdaLo",
    "AdaMomentum",
    "AdaptiveMemorySGD",
    "Amos",
    "Adafactor",
    "AdafactorHD",
    "FCAdam",
    "AdamHD",
    "Lookahead",
    "MomentumSGD",
    "MuonHD",
    "NAdamHD",
    "RAdamHD",
]
