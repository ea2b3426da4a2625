"""Stable Weight Decay (SWD; AdamS, Xie, Sato, Sugiyama, arXiv 2011.11152, Algorithm 2).

AdamS decays ``p_{t-1}`` with a strength divided by the square root of the mean of Adam's
bias-corrected second moment over all parameters::

    v_hat_t = v_t / (1 - beta2**t),   vbar_t = mean of v_hat_t over every element of every parameter
    p_t = p_{t-1} - lr * m_hat_t / (sqrt(v_hat_t) + eps) - lr * lambda / sqrt(vbar_t) * p_{t-1}

Here it is a decay *scaling* (``decay_scaling="stable"``): ``tau = lr_t * lambda / (sqrt(vbar_t)
+ eps)``, so it drives any rule of ``with_decoupled_decay`` (L2 is AdamS; Huber, proximal and the
cautious mask compose unchanged). ``v_t`` is the base's own second moment *after* this step's
update (as the paper and its code); the wrapper decays before the base step runs, so ``vbar_t`` is
computed from the state before the step and this step's gradient, term by term what the base
writes::

    sum(v_hat_t) = (beta2 * sum(v_{t-1}) + (1 - beta2) * sum(g_t**2)) / (1 - beta2**t)

``eps`` (the group's, 1e-8 by default) is not in the paper's formula; it keeps ``tau`` finite when
every gradient so far is 0. Only bases whose second moment is that EMA qualify (torch Adam, AdamW,
NAdam, RAdam, without ``amsgrad``); any other base is refused at construction, since it has no
``v_hat`` to average. Sharded (DTensor) parameters: one all-reduce per step (``whole_sums``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from adamhd.decay.whole import sum_squares, sums, whole_sums

__all__ = ["STABLE_BASES", "check_stable_base", "mean_v_hat", "stable_coefficient"]

#: bases whose ``state["exp_avg_sq"]`` is ``beta2*v + (1 - beta2)*g**2`` with ``group["betas"]``
STABLE_BASES: tuple[type, ...] = (
    torch.optim.Adam, torch.optim.AdamW, torch.optim.NAdam, torch.optim.RAdam,
)


def check_stable_base(base: type, group: Mapping[str, Any]) -> None:
    """``ValueError`` unless ``decay_scaling="stable"`` can read ``v_hat`` from this base."""
    if group.get("decay_scaling") != "stable":
        return
    if not issubclass(base, STABLE_BASES):
        names = ", ".join(b.__name__ for b in STABLE_BASES)
        raise ValueError(
            f"decay_scaling='stable' divides by the mean of Adam's v_hat; {base.__name__} keeps "
            f"no such second moment (supported bases: {names}); use decay_scaling='lr'"
        )
    if group.get("amsgrad", False):
        raise ValueError("decay_scaling='stable' with amsgrad=True: v_hat would be the running "
                         "max, not the paper's EMA; use amsgrad=False")


def mean_v_hat(groups: list[dict[str, Any]], state: Mapping[Tensor, dict],
               grad_scale: Tensor | None = None) -> float | None:
    """``vbar_t``: the mean of ``v_hat_t`` over all parameters with a gradient, from the state
    *before* the base's step and the current gradients (module docstring). ``None`` if no
    parameter has a gradient. One all-reduce for sharded parameters. ``grad_scale``: the
    ``GradScaler`` scale still in the gradients (a fused base unscales inside its own step)."""
    params, v_sums, betas2, steps = [], [], [], []
    for group in groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            s = state.get(p, {})
            params.append(p)
            betas2.append(float(group["betas"][1]))
            steps.append(float(s["step"]) + 1 if "step" in s else 1.0)
            v_sums.append(s.get("exp_avg_sq"))
    if not params:
        return None
    g_sums = sum_squares([p.grad for p in params])
    if grad_scale is not None:
        g_sums = [s / float(grad_scale) ** 2 for s in g_sums]
    present = [i for i, v in enumerate(v_sums) if v is not None]
    for i, total in zip(present, sums([v_sums[i] for i in present])):
        v_sums[i] = total
    terms = []
    for v_sum, g_sum, beta2, t in zip(v_sums, g_sums, betas2, steps):
        total = (1 - beta2) * g_sum if v_sum is None else beta2 * v_sum + (1 - beta2) * g_sum
        terms.append(total / (1 - beta2**t))
    terms = whole_sums(params, terms)
    numel = sum(p.numel() for p in params)
    return float(torch.stack([t.cpu() for t in terms]).sum()) / max(numel, 1)


def stable_coefficient(weight_decay: float, vbar: float, eps: float) -> float:
    """``c`` with ``tau = lr_t * c``: ``lambda / (sqrt(vbar) + eps)``."""
    return weight_decay / (math.sqrt(vbar) + eps)
