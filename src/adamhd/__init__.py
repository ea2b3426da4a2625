"""adamhd: AdamW with decoupled Huber decay (arXiv 2511.14721) for PyTorch.

* ``AdamHD``: the optimizer, a drop-in for ``torch.optim.AdamW``.
* ``param_groups``: the usual decayed / exempt split of a model's parameters.
* ``adamhd.decay``: the decay rules (L2, Huber; cautious; lr or schedule strength), in one place.
* ``adamhd.functional.adamhd``: the functional step (single-tensor, foreach, fused paths).
* ``adamhd.transforms``: gradient transforms (centralisation, AGC, ...) for any optimizer.
* ``Lookahead``: k steps forward, 1 step back, around any optimizer.
* ``soft_median``: a soft median of per-sample losses.
"""

from adamhd import transforms
from adamhd.decay import HuberDecay
from adamhd.groups import param_groups
from adamhd.losses import soft_median
from adamhd.optim.lookahead import Lookahead
from adamhd.optimizer import AdamHD

__all__ = ["AdamHD", "HuberDecay", "Lookahead", "param_groups", "soft_median", "transforms"]
__version__ = "0.1.0"
