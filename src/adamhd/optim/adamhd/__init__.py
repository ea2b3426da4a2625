"""AdamHD: AdamW with decoupled Huber decay (arXiv 2511.14721), one package of ``adamhd.optim``.

* ``optimizer``: the class ``AdamHD`` (options, checks, state, path choice);
* ``step``: the records of one step, ``AdamStep`` (hyperparameters) and ``AdamTensors`` (a
  group's tensor lists);
* ``functional``: ``adamhd()``, the single-tensor and foreach paths (the fused kernels are in
  ``adamhd.kernels``);
* ``update_rules``: the update rules (``update="atan2"``, ``cautious``, ...), ``rule_step``: the
  step that runs them.

The former module paths (``adamhd.optimizer``, ``adamhd.functional``, ``adamhd.hyper``,
``adamhd.update_rules``, ``adamhd.functional_rules``) are these modules (see docs/architecture.md).
"""

from adamhd.optim.adamhd.functional import adamhd, adamhd_step
from adamhd.optim.adamhd.optimizer import AdamHD
from adamhd.optim.adamhd.step import AdamStep, AdamTensors
from adamhd.optim.adamhd.update_rules import UpdateRule

__all__ = ["AdamHD", "AdamStep", "AdamTensors", "UpdateRule", "adamhd", "adamhd_step"]
