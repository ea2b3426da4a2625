r"""``AdaptiveMemorySGD``: AM-SGD, SGD whose momentum coefficient ``beta_t`` is solved for at every
step from a two-plane proximal model (Topollai & Choromanska, arXiv 2510.04988).

With ``g`` the gradient and ``d`` the stored direction, at step ``t`` (one ``beta`` for the whole
optimizer: every inner product runs over all its parameters with a gradient)::

    beta = clip(((1+lam) <g,d> - <d-g, g+lam*d>) / ||d-g||^2, 0, beta_max)
         = clip((||g||^2 + 2*lam*<g,d> - lam*||d||^2) / ||d-g||^2, 0, beta_max)
    d    = ((beta+lam)/(1+lam)) d + ((1-beta)/(1+lam)) g
    p    = p - lr*d

The first step of a parameter sets ``d = g`` (no memory yet); ``||d-g|| = 0`` gives ``beta = 0``
(then ``d`` stays ``g`` whatever ``beta``), and so does a non-finite statistic (a NaN/inf
gradient anywhere), so a NaN/inf stays in the tensors that had it.

Where the formula comes from (docs/momentum.md): the step ``u = x_new - x_t = -lr*d_new`` is
the minimiser of ``max(l_g, l_d) + |u|^2/(2 lr) + lam*|u + lr*d|^2/(2 lr)`` with the gradient
plane ``l_g = f + <g,u>`` and the memory plane ``l_d = f + lr*<g,d> + <d,u>`` (slope ``d``,
equal to ``l_g`` at the previous iterate ``x_t + lr*d``); ``beta`` is the weight of ``l_d`` in
the dual (tests/optim/test_adamem.py checks this by brute force). The ``beta`` formula, its clip
at ``beta_max`` and the defaults ``lam=0.1, beta_max=0.9, lr=0.1`` were taken from a public
implementation's account of the paper, not from the paper (its method section could not be read
here); with a changing lr the paper's memory plane may carry the previous step's lr instead.

One class, SGD only: the paper's AM-AdamW (a preconditioned metric in ``beta``, a per-tensor
coefficient) is not built. ``weight_decay`` (default 0) is decoupled, ``p *= 1 - lr*wd`` before
the step (AdamW's convention, not the coupled L2 of torch's SGD);
``adamhd.with_decoupled_decay(AdaptiveMemorySGD)`` gives Huber or cautious decay instead.
``lam`` and ``beta_max`` are one value for the whole optimizer (refused if groups differ); ``lr``
and ``weight_decay`` may differ per group. FSDP2: ``beta`` needs three sums over the whole model,
one all-reduce of 3 numbers per step; not built or tested, so DTensor parameters are refused.
One host synchronisation per step (``beta`` as a Python float). State: ``direction`` (4 bytes per
float32 parameter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from adamhd.decay.native import StepDecay, decayed_update_
from adamhd.optim._base import (
    CheckedOptimizer,
    GroupBatch,
    Params,
    finite_nonneg,
    in_unit,
    lr_value,
)
from adamhd.state import Entry

__all__ = ["AdaptiveMemorySGD", "MemoryGroup", "adaptive_memory_beta", "adaptive_memory_sgd"]


@dataclass
class MemoryGroup:
    """One parameter group's tensors that have a direction already, and its step size."""

    params: list[Tensor]
    grads: list[Tensor]
    states: list[dict[str, Any]]
    lr: float
    step_decay: StepDecay | None

    @property
    def directions(self) -> list[Tensor]:
        return [s["direction"] for s in self.states]


def _dot(a: Tensor, b: Tensor) -> float:
    dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    return float(torch.dot(a.reshape(-1).to(dtype), b.reshape(-1).to(dtype)))


def adaptive_memory_beta(grads: list[Tensor], directions: list[Tensor], lam: float,
                         beta_max: float) -> float:
    """The model-wide ``beta``: ``(|g|^2 + 2 lam <g,d> - lam |d|^2) / |d-g|^2`` in [0, beta_max]."""
    gg = sum(_dot(g, g) for g in grads)
    gd = sum(_dot(g, d) for g, d in zip(grads, directions))
    dd = sum(_dot(d, d) for d in directions)
    denom = gg - 2.0 * gd + dd
    ratio = (gg + 2.0 * lam * gd - lam * dd) / denom if denom > 0.0 else 0.0
    # a NaN/inf anywhere gives beta = 0: the non-finite values stay in the tensors that had them
    return min(max(ratio, 0.0), beta_max) if math.isfinite(ratio) else 0.0


def adaptive_memory_sgd(groups: list[MemoryGroup], lam: float, beta_max: float) -> float:
    """One AM-SGD step of every group (the math); returns the ``beta`` it used."""
    beta = adaptive_memory_beta([g for m in groups for g in m.grads],
                                [d for m in groups for d in m.directions], lam, beta_max)
    for m in groups:
        if not m.params:
            continue
        directions = m.directions
        torch._foreach_mul_(directions, (beta + lam) / (1.0 + lam))
        torch._foreach_add_(directions, m.grads, alpha=(1.0 - beta) / (1.0 + lam))
        move = partial(torch._foreach_add_, m.params, directions, alpha=-m.lr)
        decayed_update_(m.step_decay, m.params, m.states, m.lr, move, signs=directions)
    return beta


class AdaptiveMemorySGD(CheckedOptimizer):
    """AM-SGD: momentum SGD with a model-wide ``beta_t`` in closed form (module docstring).

    Args:
        params: parameters or parameter groups.
        lr: step size (float or 1-element tensor). Default 0.1.
        lam: weight of the proximal term toward the previous direction, >= 0. Default 0.1.
        beta_max: upper clip of ``beta_t``, in [0, 1). Default 0.9.
        weight_decay: decoupled decay coefficient (default L2, ``p *= 1 - lr*weight_decay``).
            Default 0.
        maximize: ascend instead of descend.
        **decay: the decay keys of ``adamhd.decay.native`` (``decay="l2"`` by default).
    """

    name = "AdaptiveMemorySGD"
    native_decay = True
    dtensor_reason = ("beta_t is one statistic of the whole model (needs an all-reduce of "
                      "|g|^2, <g,d>, |d|^2), not built")
    checks = {"lam": finite_nonneg, "beta_max": in_unit}
    later_state = {"direction": Entry()}  # d, made by a parameter's first step (d = g)

    def __init__(self, params: Params, lr: float | Tensor = 0.1, lam: float = 0.1,
                 beta_max: float = 0.9, weight_decay: float = 0.0, *,
                 maximize: bool = False, **decay: Any) -> None:
        super().__init__(params, locals())

    def check_group(self, group: dict[str, Any]) -> None:
        """The checks, then: ``lam`` and ``beta_max`` are the same in every group."""
        super().check_group(group)
        for other in getattr(self, "param_groups", []):
            for key in ("lam", "beta_max"):
                if other[key] != group[key]:
                    raise ValueError(f"Invalid {key}: {key}={group[key]!r} differs from another "
                                     f"group's {other[key]!r} (beta_t is one for the model)")

    def group_hyper(self, group: dict[str, Any], **step_values: Any) -> dict[str, Any]:
        return dict(lr=lr_value(group["lr"]), step_decay=StepDecay.from_group(group))

    def step_batches(self, batches: list[GroupBatch]) -> None:
        """One ``beta`` from the tensors that have a direction; the others start ``d = g``."""
        groups, fresh = [], []
        for b in batches:
            old = [i for i, s in enumerate(b.states) if "direction" in s]
            new = [i for i, s in enumerate(b.states) if "direction" not in s]
            groups.append(MemoryGroup(params=[b.params[i] for i in old],
                                      grads=[b.grads[i] for i in old],
                                      states=[b.states[i] for i in old], **b.hyper))
            fresh.append(MemoryGroup(params=[b.params[i] for i in new],
                                     grads=[b.grads[i] for i in new],
                                     states=[b.states[i] for i in new], **b.hyper))
        first = self.param_groups[0]
        adaptive_memory_sgd(groups, first["lam"], first["beta_max"])
        for m in fresh:  # first step: d = g
            for state, g in zip(m.states, m.grads):
                state["direction"] = g.clone(memory_format=torch.preserve_format)
            for p, state in zip(m.params, m.states):
                move = partial(p.add_, state["direction"], alpha=-m.lr)
                decayed_update_(m.step_decay, [p], [state], m.lr, move,
                                signs=[state["direction"]], foreach=False)
