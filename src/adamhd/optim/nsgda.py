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
gradient); here ``weight_decay`` (default 0) is decoupled L2, ``p *= 1 - lr*wd`` before the step,
as in AdamW, and ``adamhd.with_decoupled_decay(NSGDA)`` gives the Huber or cautious rules instead.
pytorch_optimizer has no nSGDA.

Under FSDP2 (DTensor parameters) ``||m||`` is the whole tensor's: one all-reduce per step for all
sharded tensors together (``adamhd.optim._reduce``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from adamhd.optim._base import (
    CheckedOptimizer,
    Params,
    check_lr,
    finite_nonneg,
    in_unit,
    lr_value,
    new_step,
    run_closure,
    stat_dtype,
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
    lr: float
    momentum: float
    eps: float
    weight_decay: float
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
        if g.weight_decay != 0.0:
            torch._foreach_mul_(g.params, 1.0 - g.lr * g.weight_decay)
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
        weight_decay: decoupled L2, ``p *= 1 - lr*weight_decay``. Default 0.
        maximize: ascend instead of descend.
        foreach: use ``torch._foreach_*`` ops (default ``None``: on); ``False``: a loop.
    """

    name = "NSGDA"

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
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, eps=eps, weight_decay=weight_decay,
                        maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)

    def check_group(self, group: dict[str, Any]) -> None:
        check_lr(group)
        in_unit("momentum", group["momentum"])
        finite_nonneg("eps", group["eps"])
        finite_nonneg("weight_decay", group["weight_decay"])

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        self.check_grads()
        batches = []
        for group in self.param_groups:
            params = self.params_with_grad(group)
            for p in params:
                if not self.state[p]:
                    self.state[p]["step"] = new_step(p)
                    self.state[p]["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
            if not params:
                continue
            batches.append(NSGDAGroup(
                params=params,
                grads=[-p.grad if group["maximize"] else p.grad for p in params],
                momenta=[self.state[p]["momentum_buffer"] for p in params],
                steps=[self.state[p]["step"] for p in params],
                lr=lr_value(group["lr"]),
                momentum=group["momentum"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                foreach=group["foreach"] is not False,
            ))
        nsgda(batches)
        return loss
