"""adamhd: AdamW with decoupled Huber decay (arXiv 2511.14721) for PyTorch.

* ``AdamHD``: the optimizer, a drop-in for ``torch.optim.AdamW``.
* ``param_groups``: the usual decayed / exempt split of a model's parameters.
* ``adamhd.decay``: the decay rule and its threshold (the paper's math, in one place).
* ``adamhd.functional.adamhd``: the functional step (single-tensor, foreach, fused paths).
"""

from adamhd.decay import HuberDecay
from adamhd.groups import param_groups
from adamhd.optim import NSGDA, SM3, SMMF, Adafactor, AdaLo
from adamhd.optimizer import AdamHD

__all__ = [
    "NSGDA",
    "SM3",
    "SMMF",
    "AdaLo",
    "Adafactor",
    "AdamHD",
    "HuberDecay",
    "param_groups",
]
__version__ = "0.1.0"
