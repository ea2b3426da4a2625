"""adamhd: AdamW with decoupled Huber decay (arXiv 2511.14721) for PyTorch.

* ``AdamHD``: the optimizer, a drop-in for ``torch.optim.AdamW``.
* ``param_groups``: the usual decayed / exempt split of a model's parameters.
* ``adamhd.decay``: the decay rules (L2, Huber; cautious; lr or schedule strength), in one place.
* ``with_decoupled_decay(OptimizerClass)``: any torch optimizer with decoupled Huber/L2 decay;
  ``SGDW`` (arXiv 1711.05101 Algorithm 1), ``NAdamHD``, ``RAdamHD``, ``AdafactorHD``, ``MuonHD``.
* The survey's optimizers: ``NSGDA``, ``AdaLo``, ``Amos``, ``Adafactor``, ``SMMF``, ``SM3``
  (docs/optimizers.md); momentum rules ``AdaMomentum``, ``FCAdam``, ``AdaptiveMemorySGD``
  (docs/momentum.md).
* ``adamhd.functional.adamhd``: the functional step (single-tensor, foreach, fused paths).
* Where each technique lives and what is public: docs/architecture.md.
* ``adamhd.transforms``: gradient transforms (centralisation, AGC, ...) for any optimizer.
* ``Lookahead``: k steps forward, 1 step back, around any optimizer.
* ``soft_median``: a soft median of per-sample losses.
* ``head_gradient_alignment``, ``GradTailState``: GradTail's per-sample alignment score from the
  softmax head's gradient in closed form (arXiv 2201.05938; the weight map is not built).
"""

# optim, and the former module paths of AdamHD's parts (docs/architecture.md), as attributes
from adamhd import (  # noqa: F401
    functional,
    functional_rules,
    hyper,
    optim,
    optimizer,
    transforms,
    update_rules,
)
from adamhd.decay import HuberDecay
from adamhd.decay.wrapper import with_decoupled_decay
from adamhd.gradtail import GradTailState, head_gradient_alignment
from adamhd.groups import param_groups
from adamhd.losses import soft_median
from adamhd.optim import *  # noqa: F403  (the optimizer family: adamhd.optim.__all__)

__all__ = [
    "GradTailState",
    "HuberDecay",
    "head_gradient_alignment",
    "param_groups",
    "soft_median",
    "transforms",
    "with_decoupled_decay",
]
__all__ += optim.__all__  # the optimizer family
__version__ = "0.1.0"
