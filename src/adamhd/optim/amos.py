r"""``Amos``: Adam-style steps with a shared per-tensor second moment and adaptive decay toward a
model-oriented scale (Tian & Parikh, arXiv 2210.11693, Algorithm 1; jestimator's reference code).

Per parameter tensor ``p`` with gradient ``g``, its scale ``eta``, step ``t``, the global learning
rate ``xi`` (``lr``) and two scalars of state per tensor, ``v`` and ``b`` (both start at 0)::

    v     = beta*v + (1 - beta)*mean(g**2)                 one number per tensor: memory-light
    r     = (1 - beta**t) / max(v, eps)                    1 / v_hat
    gamma = xi**2 * r * mean(g**2) / sqrt(1 + sqrt(xi)*b/4)        the adaptive decay
    d     = 1 / (1 + sqrt(xi*eta)*b/4)                     the learning-rate decay schedule
    p     = p - d * (xi*eta*sqrt(r)*g + gamma/2 * p)
    b     = b + gamma*(1 + b)

``b`` accumulates the decay applied so far; both the step (``d``) and the decay's own factor shrink
as it grows: Amos's schedule, with no step count or horizon to set. ``eta`` (group key): a float,
or ``None`` (default) for ``1/sqrt(fan_in)`` on tensors of 2 or more dimensions (``fan_in =
numel/shape[0]``, the scale of a fan-in initialisation) and 1.0 on vectors and scalars (norm
gains); this default is ours (the paper asks the model for it). ``cautious_decay=True`` applies
``gamma/2 * p`` only where ``g*p >= 0`` (arXiv 2510.12402's mask, the step's direction being
``g``'s; wrapped by ``with_decoupled_decay``, the key also makes the wrapper's rule cautious:
one name, one meaning for the group). ``weight_decay``: the reference code's ``extra_l2`` (added
to ``gamma/2``), default 0; it is part of Amos's own decay factor (one op with ``gamma``), not a
rule of ``adamhd.decay.native``: ``with_decoupled_decay(Amos)`` adds Huber or L2 decay.
No momentum (the reference's optional EMA of updates is left out). State: ``step``, ``amos_v``,
``amos_b`` (0-dim, float32; float64 for float64 weights): 12 bytes per tensor. Under FSDP2
``mean(g**2)`` is the whole tensor's: one all-reduce per step (``adamhd.optim._reduce``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from adamhd.decay.rules import cautious_weights
from adamhd.optim._base import (
    CheckedOptimizer,
    GroupBatch,
    Params,
    finite_nonneg,
    flag,
    in_unit,
    lr_value,
    new_step,
    positive_or_none,
    stat_dtype,
    state_lists,
)
from adamhd.optim._reduce import sq_sums

__all__ = ["Amos", "AmosGroup", "amos", "default_eta"]

EPS = 2.0**-125  # the reference's "smallest positive normal" guard on v


@dataclass
class AmosGroup:
    """One parameter group's tensors (those with a gradient) and hyperparameters."""

    params: list[Tensor]
    grads: list[Tensor]
    vs: list[Tensor]
    bs: list[Tensor]
    steps: list[Tensor]
    etas: list[float]
    xi: float
    beta: float
    extra_l2: float
    cautious: bool


def default_eta(p: Tensor) -> float:
    """``1/sqrt(fan_in)`` for tensors of 2+ dimensions, 1.0 otherwise."""
    if p.dim() < 2 or p.numel() == 0:
        return 1.0
    return 1.0 / math.sqrt(p.numel() // p.shape[0])


def amos(groups: list[AmosGroup]) -> None:
    """One Amos step (the math; ``Amos.step`` only gathers the lists). ``mean(g**2)`` of all
    tensors is taken together: one all-reduce per step under FSDP2."""
    grads = [g for group in groups for g in group.grads]
    if not grads:
        return
    sums = iter(sq_sums(grads, torch.float64))
    for gr in groups:
        for p, g, v, b, step, eta in zip(gr.params, gr.grads, gr.vs, gr.bs, gr.steps, gr.etas):
            step.add_(1.0)
            g2 = float(next(sums)) / max(p.numel(), 1)
            v.mul_(gr.beta).add_((1.0 - gr.beta) * g2)
            shrink, coef, gamma = _scalars(gr, float(v), float(b), g2, float(step), eta)
            pull = p * shrink if not gr.cautious else p * cautious_weights(g, p) * shrink
            p.sub_(pull).sub_(g * coef)
            b.add_(gamma * (1.0 + float(b)))


def _scalars(gr: AmosGroup, v: float, b: float, g2: float, t: float,
             eta: float) -> tuple[float, float, float]:
    """This step's decay factor on ``p``, step factor on ``g``, and ``gamma`` (Python floats,
    float64 arithmetic, from the stored state)."""
    r = (1.0 - gr.beta**t) / max(v, EPS)
    gamma = gr.xi**2 * r * g2 / math.sqrt(1.0 + 0.25 * math.sqrt(gr.xi) * b)
    d = 1.0 / (1.0 + 0.25 * math.sqrt(gr.xi * eta) * b)
    return d * (0.5 * gamma + gr.extra_l2), d * gr.xi * eta * math.sqrt(r), gamma


class Amos(CheckedOptimizer):
    """Amos; see the module docstring for the formula.

    Args:
        params: parameters or parameter groups.
        lr: the global learning rate ``xi`` (float or 1-element tensor); the reference suggests
            about ``1/sqrt(number of batches)``. Default 1e-2.
        beta: EMA coefficient of the shared second moment, ``0 <= beta < 1``. Default 0.999.
        eta: the tensor's expected scale (a float > 0), or ``None`` for ``default_eta``.
        weight_decay: extra L2 (the reference's ``extra_l2``). Default 0.
        cautious_decay: decay only where ``g*p >= 0``. Default ``False``.
        maximize: ascend instead of descend.
    """

    name = "Amos"
    stat_keys = ("amos_v", "amos_b")
    checks = {"beta": in_unit, "eta": positive_or_none, "weight_decay": finite_nonneg,
              "cautious_decay": flag}

    def __init__(self, params: Params, lr: float | Tensor = 1e-2, beta: float = 0.999,
                 eta: float | None = None, weight_decay: float = 0.0, *,
                 cautious_decay: bool = False, maximize: bool = False) -> None:
        super().__init__(params, locals())

    def new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        dev = p.to_local().device if hasattr(p, "to_local") else p.device
        zero = torch.zeros((), dtype=stat_dtype(p), device=dev)
        return {"step": new_step(p), "amos_v": zero, "amos_b": zero.clone()}

    def group_hyper(self, group: dict[str, Any], **step_values: Any) -> dict[str, Any]:
        return dict(eta=group["eta"], xi=lr_value(group["lr"]), beta=group["beta"],
                    extra_l2=group["weight_decay"], cautious=group["cautious_decay"])

    def step_batches(self, batches: list[GroupBatch]) -> None:
        """All groups in one ``amos`` call (one all-reduce of ``mean(g**2)`` under FSDP2)."""
        amos([
            AmosGroup(params=b.params, grads=b.grads,
                      **state_lists(b.states, vs="amos_v", bs="amos_b", steps="step"),
                      etas=[b.hyper["eta"] or default_eta(p) for p in b.params],
                      **{k: v for k, v in b.hyper.items() if k != "eta"})
            for b in batches
        ])
