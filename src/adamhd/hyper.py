"""``AdamStep``: the hyperparameters of one AdamHD step, built once per param group.

One typed record instead of a long keyword list: ``adamhd.functional``'s single-tensor and foreach
paths and the fused kernels (``adamhd.kernels.fused_adamhd``) all take it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor
from torch.optim.optimizer import _to_scalar

from adamhd.decay import DecayRule, group_decay_coefficient, rule_from_group
from adamhd.update_rules import UpdateRule

__all__ = ["AdamStep"]


@dataclass(frozen=True)
class AdamStep:
    """Hyperparameters of one step.

    ``weight_decay`` is the decay coefficient ``c`` with ``tau = lr * c``: the group's
    ``weight_decay``, divided by ``initial_lr`` for ``decay_scaling="schedule"``
    (``adamhd.decay.strength``).
    """

    decay: DecayRule
    lr: float | Tensor
    beta1: float | Tensor  # a 0-dim Tensor where the group's betas are Tensors
    beta2: float | Tensor
    eps: float
    weight_decay: float
    amsgrad: bool = False
    maximize: bool = False
    capturable: bool = False
    differentiable: bool = False
    update: UpdateRule = UpdateRule()

    @property
    def decays(self) -> bool:
        return self.weight_decay != 0

    @classmethod
    def from_group(cls, group: Mapping[str, Any]) -> AdamStep:
        """The step a (validated) AdamHD param group asks for."""
        beta1, beta2 = (_to_scalar(b) for b in group["betas"])  # 1-element Tensors as 0-dim
        return cls(
            decay=rule_from_group(group),
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group_decay_coefficient(group),
            amsgrad=group.get("amsgrad", False),
            maximize=group.get("maximize", False),
            capturable=group.get("capturable", False),
            differentiable=group.get("differentiable", False),
            update=UpdateRule.from_group(group),
        )
