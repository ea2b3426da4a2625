r"""``NSGDA``: SGD with per-tensor normalised momentum (the survey's nSGDA sketch).

Per parameter tensor ``p`` with gradient ``g``, step ``t`` (counted per tensor)::

    m     = mu*m + (1 - mu)*g
    m_hat = m / (1 - mu**t)
    p     = p - lr * m_hat / (||m_hat|| + eps)          ||.|| of the whole tensor

so every tensor moves by ``lr`` (in L2 norm) per step, whatever the gradient's scale. Defaults
(the sketch's): ``lr=4e-5, momentum=0.9, eps=1e-8``. Source: the seed's ``nSGDA`` code, after
normalised SGD (arXiv 2210.04319).

Differences from the sketch: its step counter was never created or advanced (a ``KeyError`` on
the first step; read as written, ``1 - mu**t`` would stay 0); here ``t`` counts the tensor's steps.
The sketch's ``weight_decay`` was coupled L2 (``g += wd*p``, then normalised together with the
gradient); here ``weight_decay`` (default 0) is decoupled: by default L2, ``p *= 1 - lr*wd`` before
the step, as in AdamW; the decay keys (``decay="huber"``, ``decay_form``, ``cautious_decay`` with
the sign of ``m``, ...) select another rule of ``adamhd.decay`` (``adamhd.decay.native``).
pytorch_optimizer has no nSGDA.

Under FSDP2 (DTensor parameters) ``||m||`` is the whole tensor's: one all-reduce per step for all
sharded tensors together (``adamhd.optim._reduce``).
"""

from __future__ import annotations

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
    new_step,
    stat_dtype,
    state_lists,
    zero_moment,
)
from adamhd.optim._reduce import sq_sums

__all__ = ["NSGDA", "NSGDAGroup", "nsgda"]


@dataclass
class NSGDAGroup:
    """One parameter group's tensors (those with a gradient) and hyperparameters."""

    params: list[Tensor]
    grads: list[Tensor]
    momenta: list[Tensor]
    steps: list[Tensor]
    states: list[dict[str, Any]]
    lr: float
    momentum: float
    eps: float
    step_decay: StepDecay | None
    foreach: bool


def nsgda(groups: list[NSGDAGroup]) -> None:
    """One NSGDA step (the math; ``NSGDA.step`` only gathers the lists). The norms of all groups'
    momenta are taken together: one all-reduce per step under FSDP2."""
    for g in groups:
        torch._foreach_add_(g.steps, 1.0)
        if g.foreach:
            torch._foreach_lerp_(g.momenta, g.grads, 1.0 - g.momentum)
        else:
            for m, grad in zip(g.momenta, g.grads):
                m.lerp_(grad, 1.0 - g.momentum)
    momenta = [m for g in groups for m in g.momenta]
    dtype = torch.float64 if any(m.dtype == torch.float64 for m in momenta) else torch.float32
    norms = iter([s.sqrt() for s in sq_sums(momenta, dtype)])
    for g in groups:
        coefs = []
        for m, step in zip(g.momenta, g.steps):
            bias_correction = 1.0 - g.momentum ** float(step)
            norm = next(norms).to(stat_dtype(m))
            # lr * m_hat / (||m_hat|| + eps), m_hat = m / bias_correction
            coefs.append(-g.lr / ((norm / bias_correction + g.eps) * bias_correction))
        decayed_update_(g.step_decay, g.params, g.states, g.lr, partial(_move, g, coefs),
                        signs=g.momenta)


def _move(g: NSGDAGroup, coefs: list[Tensor]) -> None:
    """``p += coef*m``: the normalised step."""
    if g.foreach:
        torch._foreach_add_(g.params, torch._foreach_mul(g.momenta, coefs))
    else:
        for p, m, c in zip(g.params, g.momenta, coefs):
            p.add_(m * c)


class NSGDA(CheckedOptimizer):
    """Per-tensor normalised momentum SGD; see the module docstring for the formula.

    Args:
        params: parameters or parameter groups.
        lr: step length per tensor (float or 1-element tensor). Default 4e-5.
        momentum: ``mu``, 0 <= mu < 1. Default 0.9.
        eps: added to the norm. Default 1e-8.
        weight_decay: decoupled decay coefficient (default L2, ``p *= 1 - lr*weight_decay``).
            Default 0.
        maximize: ascend instead of descend.
        foreach: use ``torch._foreach_*`` ops (default ``None``: on); ``False``: a loop.
        **decay: the decay keys of ``adamhd.decay.native`` (``decay="l2"`` by default;
            ``cautious_decay`` masks with the sign of ``m``).
    """

    name = "NSGDA"
    native_decay = True
    checks = {"momentum": in_unit, "eps": finite_nonneg}

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 4e-5,
        momentum: float = 0.9,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        **decay: Any,
    ) -> None:
        super().__init__(params, locals())

    def new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {"step": new_step(p), "momentum_buffer": zero_moment(p)}

    def group_hyper(self, group: dict[str, Any], **step_values: Any) -> dict[str, Any]:
        return dict(lr=lr_value(group["lr"]), momentum=group["momentum"], eps=group["eps"],
                    step_decay=StepDecay.from_group(group), foreach=group["foreach"] is not False)

    def step_batches(self, batches: list[GroupBatch]) -> None:
        """All groups in one ``nsgda`` call (one all-reduce of the norms under FSDP2)."""
        nsgda([
            NSGDAGroup(params=b.params, grads=b.grads, states=b.states, **b.hyper,
                       **state_lists(b.states, momenta="momentum_buffer", steps="step"))
            for b in batches
        ])
