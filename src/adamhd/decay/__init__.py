"""Decoupled decay rules as components: the one place where each rule's math lives.

* ``adamhd.decay.rules``: the rules (``L2Decay``, ``HuberDecay``; explicit or proximal form,
  optionally cautious) and their per-tensor and foreach formulas;
* ``adamhd.decay.threshold``: Huber's adaptive threshold (EMA of ``mean|p|``, non-finite guard);
* ``adamhd.decay.strength``: the step's strength ``tau`` (``decay_scaling="lr"`` or
  ``"schedule"``);
* ``adamhd.decay.options``: a param group's decay keys: defaults, validation, ``rule_from_group``.

``with_decoupled_decay`` (``adamhd.decay.wrapper``) adds Stable Weight Decay
(``adamhd.decay.stable``) and CPR (``adamhd.decay.cpr``), whose whole-tensor sums of sharded
weights are in ``adamhd.decay.whole``; they are imported from their modules (not re-exported
here, so that this package keeps importing nothing else of ``adamhd``).

These four modules import nothing else of ``adamhd``; ``adamhd.distributed`` (whole-tensor
``mean|p|`` of sharded parameters) builds on ``threshold``. See ``docs/decay.md``.
"""

import adamhd.decay.rules as rules
from adamhd.decay.options import (
    DECAY_DEFAULTS,
    DECAY_RULES,
    check_decay_options,
    rule_from_group,
)
from adamhd.decay.rules import *  # noqa: F403  (the rules: adamhd.decay.rules.__all__)
from adamhd.decay.strength import (
    DECAY_SCALINGS,
    decay_coefficient,
    decay_strength,
    group_decay_coefficient,
    remember_initial_lr,
)
from adamhd.decay.threshold import (
    foreach_mean_abs,
    foreach_update_adaptive_threshold,
    mean_abs,
    mu_dtype,
    update_adaptive_threshold,
)

__all__ = [
    "DECAY_DEFAULTS",
    "DECAY_RULES",
    "DECAY_SCALINGS",
    "check_decay_options",
    "decay_coefficient",
    "decay_strength",
    "foreach_mean_abs",
    "foreach_update_adaptive_threshold",
    "group_decay_coefficient",
    "mean_abs",
    "mu_dtype",
    "remember_initial_lr",
    "rule_from_group",
    "update_adaptive_threshold",
]
__all__ += rules.__all__  # the rules and their formulas
