"""Optimizers other than AdamHD: the survey's (arXiv ids in each module) and their math.

Each module keeps the math in one plain function (``nsgda``, ``adalo``, ``adafactor``, ``smmf``,
``sm3``) and a thin ``torch.optim.Optimizer`` class that validates and holds state. See
docs/optimizers.md.
"""

from adamhd.optim.adafactor import Adafactor
from adamhd.optim.adalo import AdaLo
from adamhd.optim.nsgda import NSGDA
from adamhd.optim.sm3 import SM3
from adamhd.optim.smmf import SMMF

__all__ = ["SM3", "SMMF", "AdaLo", "Adafactor", "NSGDA"]
