r"""``AdaMomentum``: Adam with the second moment of the momentum (arXiv 2106.11514, "twofold EMA").

Per parameter tensor, step ``t`` (counted per tensor)::

    m     = beta1*m + (1 - beta1)*g
    v     = beta2*v + (1 - beta2)*m**2 + eps          the momentum m, not g, is squared
    p     = p - lr * (m / (1 - beta1**t)) / sqrt(v / (1 - beta2**t))

Wang et al., Algorithm 1 (AdaMomentum): ``eps`` is added to ``v`` at every step, inside the EMA, as
in AdaBelief, and the denominator has no second ``eps``: ``v`` already holds at least
``eps*(1 - beta2**t)/(1 - beta2)``, so ``sqrt(v_hat) >= sqrt(eps/(1 - beta2))`` and never divides
by 0. Defaults: the paper's ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8``.

``weight_decay`` (default 0) is decoupled, by default L2, ``p *= 1 - lr*wd`` before the step
(AdamW's convention); the decay keys of ``adamhd.decay.native`` give Huber, proximal, cautious or
schedule-scaled decay. Elementwise: no per-tensor statistic, so FSDP2 (DTensor)
parameters step shard by shard with no collective. State: ``m`` and ``v`` (8 bytes per float32
parameter, as Adam).
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
    Params,
    Range,
    beta_pair,
    lr_value,
    new_step,
    positive,
    state_lists,
    zero_moment,
)

__all__ = ["AdaMomentum", "AdaMomentumGroup", "adamomentum", "check_betas"]


@dataclass
class AdaMomentumGroup:
    """One parameter group's tensors (those with a gradient) and hyperparameters."""

    params: list[Tensor]
    grads: list[Tensor]
    exp_avgs: list[Tensor]
    exp_avg_sqs: list[Tensor]
    steps: list[Tensor]
    lr: float
    beta1: float
    beta2: float
    eps: float
    states: list[dict[str, Any]]
    step_decay: StepDecay | None


def adamomentum(g: AdaMomentumGroup) -> None:
    """One AdaMomentum step of one group (the math; ``AdaMomentum.step`` gathers the lists)."""
    torch._foreach_add_(g.steps, 1.0)
    torch._foreach_lerp_(g.exp_avgs, g.grads, 1.0 - g.beta1)
    torch._foreach_mul_(g.exp_avg_sqs, g.beta2)
    torch._foreach_addcmul_(g.exp_avg_sqs, g.exp_avgs, g.exp_avgs, value=1.0 - g.beta2)
    torch._foreach_add_(g.exp_avg_sqs, g.eps)
    ts = [float(s) for s in g.steps]
    denoms = torch._foreach_sqrt(g.exp_avg_sqs)
    torch._foreach_div_(denoms, [(1.0 - g.beta2 ** t) ** 0.5 for t in ts])
    move = partial(torch._foreach_addcdiv_, g.params, g.exp_avgs, denoms,
                   [-g.lr / (1.0 - g.beta1 ** t) for t in ts])
    decayed_update_(g.step_decay, g.params, g.states, g.lr, move, signs=g.exp_avgs)


def check_betas(group: dict[str, Any]) -> None:
    beta_pair("betas", group["betas"])


class AdaMomentum(CheckedOptimizer):
    """Adam whose second moment is the EMA of ``m**2`` (see the module docstring).

    Args:
        params: parameters or parameter groups.
        lr: step size (float or 1-element tensor). Default 1e-3.
        betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
        eps: added to ``v`` at every step (inside the EMA). Default 1e-8; must be > 0.
        weight_decay: decoupled decay coefficient (default L2, ``p *= 1 - lr*weight_decay``).
            Default 0.
        maximize: ascend instead of descend.
        **decay: the decay keys of ``adamhd.decay.native`` (``decay="l2"`` by default;
            ``cautious_decay`` masks with the sign of ``exp_avg``).
    """

    name = "AdaMomentum"
    native_decay = True
    checks = {"betas": beta_pair, "eps": Range(positive.ok, "a finite number > 0: the floor of v")}

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        **decay: Any,
    ) -> None:
        super().__init__(params, locals())

    def new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {"step": new_step(p), "exp_avg": zero_moment(p), "exp_avg_sq": zero_moment(p)}

    def group_step(self, params: list[Tensor], grads: list[Tensor],
                   states: list[dict[str, Tensor]], hyper: dict[str, Any]) -> None:
        adamomentum(AdaMomentumGroup(
            params=params,
            grads=grads,
            **state_lists(states, exp_avgs="exp_avg", exp_avg_sqs="exp_avg_sq", steps="step"),
            lr=lr_value(hyper["lr"]),
            beta1=hyper["betas"][0],
            beta2=hyper["betas"][1],
            eps=hyper["eps"],
            states=states,
            step_decay=hyper["step_decay"],
        ))
