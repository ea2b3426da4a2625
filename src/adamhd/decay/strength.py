"""The decay strength ``tau`` of a step: how far a rule pulls the weights this step.

* ``decay_scaling="lr"`` (default, AdamW's convention, arXiv 1711.05101 as torch implements it)::

      tau = lr_t * weight_decay

* ``decay_scaling="schedule"`` (SGDW, arXiv 1711.05101 Algorithm 1: ``eta_t * lambda``)::

      tau = (lr_t / initial_lr) * weight_decay

  The decay follows the schedule multiplier ``eta_t = lr_t / initial_lr``, not the step size: with
  a constant lr it is ``weight_decay`` per step whatever the lr. ``initial_lr`` is the group's
  ``"initial_lr"``: torch's lr schedulers set it to the lr they start from; an optimizer built with
  ``"schedule"`` sets it to the lr at construction (``remember_initial_lr``) if no scheduler did
  so first, and a scheduler made later keeps it (``setdefault``). An lr of 0 at construction has
  no schedule multiplier and is an error.

Both are written ``tau = lr_t * decay_coefficient(...)``, so a kernel that computes
``lr * weight_decay`` serves both scalings when given the coefficient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

DECAY_SCALINGS = ("lr", "schedule")

__all__ = [
    "DECAY_SCALINGS",
    "decay_coefficient",
    "decay_strength",
    "group_decay_coefficient",
    "remember_initial_lr",
]


def decay_coefficient(weight_decay: float, scaling: str = "lr", initial_lr: float = 1.0) -> float:
    """``c`` such that ``tau = lr_t * c``: ``weight_decay``, or ``weight_decay / initial_lr``."""
    if scaling == "lr":
        return weight_decay
    return weight_decay / initial_lr


def decay_strength(lr: float | Tensor, coefficient: float) -> float | Tensor:
    """``tau = lr_t * c`` (``c`` from ``decay_coefficient``)."""
    return lr * coefficient


def _as_float(x: Any) -> float | None:
    if isinstance(x, Tensor):
        return float(x.detach().reshape(())) if x.numel() == 1 else None
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x)


def _usable_initial_lr(value: Any, source: str) -> float:
    initial = _as_float(value)
    if initial is None or not 0.0 < initial < math.inf:
        raise ValueError(
            f"decay_scaling='schedule' needs a finite initial_lr > 0 (decay strength "
            f"(lr_t / initial_lr) * weight_decay), got {source}={value!r}; use "
            "decay_scaling='lr' or a non-zero lr"
        )
    return initial


def group_decay_coefficient(group: Mapping[str, Any]) -> float:
    """``decay_coefficient`` of a param group (keys ``weight_decay``, ``decay_scaling``,
    ``initial_lr``); ``ValueError`` if ``"schedule"`` has no usable ``initial_lr``."""
    scaling = group.get("decay_scaling", "lr")
    if scaling == "lr":
        return group["weight_decay"]
    if "initial_lr" not in group:
        raise ValueError(
            "decay_scaling='schedule' needs the group's initial_lr (set at construction or by an "
            "lr scheduler); this group has none"
        )
    initial = _usable_initial_lr(group["initial_lr"], "initial_lr")
    return decay_coefficient(group["weight_decay"], scaling, initial)


def check_schedule_start(group: Mapping[str, Any]) -> None:
    """For ``decay_scaling="schedule"``: ``ValueError`` unless the group's ``initial_lr`` (or,
    without one, its ``lr``) is a finite number > 0."""
    if group.get("decay_scaling", "lr") != "schedule":
        return
    if "initial_lr" in group:
        _usable_initial_lr(group["initial_lr"], "initial_lr")
    else:
        _usable_initial_lr(group["lr"], "lr")


def remember_initial_lr(group: dict[str, Any]) -> None:
    """For ``decay_scaling="schedule"``: set ``group["initial_lr"]`` to the current lr (a float)
    unless a scheduler already did. Call after ``check_schedule_start``."""
    if group.get("decay_scaling", "lr") == "schedule" and "initial_lr" not in group:
        group["initial_lr"] = _usable_initial_lr(group["lr"], "lr")
