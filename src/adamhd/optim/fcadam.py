r"""``FCAdam``: Adam on a Grünwald-Letnikov fractional-order gradient (FCAdam_G-L).

Zhou, Zhao & Huang, "A Deep Learning Optimizer Based on Grünwald-Letnikov Fractional Order
Definition", Mathematics 11(2):316, 2023. Per parameter tensor, step ``t``::

    w_0 = 1,   w_j = (1 - (alpha + 1)/(j + 1)) * w_{j-1}             j = 1..K
    D_t = g_t + sum_{j=1..K} c_j * w_j * g_{t-j}                      (g_{t-j} = 0 for j >= t)
    Adam on D_t:  m = lerp(m, D_t, 1-beta1),  v = lerp(v, D_t**2, 1-beta2),
                  p -= lr * m_hat / (sqrt(v_hat) + eps)

The memory is truncated to the last ``K`` raw gradients (the paper's short-memory principle,
``K = 10``). ``c`` is the paper's disturbance: a 0/1 mask with one zero at a random position,
reshuffled every step (``drop=True``); here the position is drawn from a generator seeded by
``(seed, t)``, so a resumed run draws the same positions (no generator state to save).
``drop=False`` keeps every term. ``alpha = 1`` makes every ``w_j`` (j >= 1) zero: plain Adam.
Defaults: ``alpha=0.9`` (FCAdam_G-L's best order in the paper's experiments), ``K=10``, Adam's
``lr=1e-3, betas=(0.9, 0.999), eps=1e-8``.

Memory: ``K`` extra gradient copies per parameter in a ring buffer of shape ``(K, *p.shape)``,
plus ``m`` and ``v``: ``(K + 2) * 4`` bytes per float32 parameter (48 with K=10, Adam 8). The
buffer holds the raw gradients ``g``, not ``D``. ``weight_decay``: decoupled, L2 as AdamW by
default; the decay keys of ``adamhd.decay.native`` for Huber, proximal or cautious decay.
DTensor (FSDP2) parameters are refused: the stacked ring buffer is not sharded like the
parameter (not built).
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
    beta_pair,
    finite_nonneg,
    flag,
    in_open_closed_unit,
    integer,
    lr_value,
    new_step,
    state_lists,
    zero_moment,
)

__all__ = ["FCAdam", "FCAdamGroup", "fcadam", "gl_weights"]


def gl_weights(alpha: float, k: int) -> list[float]:
    """``[w_1, ..., w_K]`` of the paper's recursion (``w_0 = 1`` is the current gradient's)."""
    out, w = [], 1.0
    for j in range(1, k + 1):
        w *= 1.0 - (alpha + 1.0) / (j + 1.0)
        out.append(w)
    return out


def dropped_term(seed: int, t: int, k: int) -> int:
    """The ``j`` (1..K) whose ``c_j`` is 0 at step ``t``."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + t)
    return int(torch.randint(k, (), generator=gen)) + 1


@dataclass
class FCAdamGroup:
    params: list[Tensor]
    grads: list[Tensor]
    histories: list[Tensor]
    exp_avgs: list[Tensor]
    exp_avg_sqs: list[Tensor]
    steps: list[Tensor]
    lr: float
    betas: tuple[float, float]
    eps: float
    states: list[dict[str, Any]]
    step_decay: StepDecay | None
    alpha: float
    drop: bool
    seed: int


def _fractional(g: FCAdamGroup, grad: Tensor, history: Tensor, t: int) -> Tensor:
    """``D_t`` from the ring buffer (``g_{t-j}`` sits in slot ``(t-1-j) mod K``); then ``g_t``
    takes slot ``(t-1) mod K``."""
    k = history.shape[0]
    weights = gl_weights(g.alpha, k)
    drop = dropped_term(g.seed, t, k) if g.drop else 0
    coef = [0.0] * k
    for j in range(1, min(k, t - 1) + 1):
        coef[(t - 1 - j) % k] = 0.0 if j == drop else weights[j - 1]
    c = torch.tensor(coef, dtype=history.dtype, device=history.device)
    d = grad + torch.tensordot(c, history, dims=1)
    history[(t - 1) % k].copy_(grad)
    return d


def fcadam(g: FCAdamGroup) -> None:
    """One FCAdam_G-L step of one group (the math; ``FCAdam.step`` gathers the lists)."""
    torch._foreach_add_(g.steps, 1.0)
    ts = [int(s) for s in g.steps]
    ds = [_fractional(g, grad, h, t) for grad, h, t in zip(g.grads, g.histories, ts)]
    beta1, beta2 = g.betas
    torch._foreach_lerp_(g.exp_avgs, ds, 1.0 - beta1)
    torch._foreach_mul_(g.exp_avg_sqs, beta2)
    torch._foreach_addcmul_(g.exp_avg_sqs, ds, ds, value=1.0 - beta2)
    denoms = torch._foreach_sqrt(g.exp_avg_sqs)
    torch._foreach_div_(denoms, [(1.0 - beta2 ** t) ** 0.5 for t in ts])
    torch._foreach_add_(denoms, g.eps)
    move = partial(torch._foreach_addcdiv_, g.params, g.exp_avgs, denoms,
                   [-g.lr / (1.0 - beta1 ** t) for t in ts])
    decayed_update_(g.step_decay, g.params, g.states, g.lr, move, signs=g.exp_avgs)


class FCAdam(CheckedOptimizer):
    """Adam on the truncated Grünwald-Letnikov fractional gradient (see the module docstring).

    Args:
        params: parameters or parameter groups.
        lr, betas, eps: Adam's (defaults 1e-3, (0.9, 0.999), 1e-8).
        weight_decay: decoupled decay coefficient (default L2, ``p *= 1 - lr*weight_decay``).
            Default 0.
        alpha: the fractional order, ``0 < alpha <= 1`` (1: Adam). Default 0.9.
        history: ``K``, the number of past gradients kept (an integer >= 1). Default 10.
        drop: drop one random memory term per step (the paper's mask ``c``). Default True.
        seed: seeds the dropped term's draw (``(seed, step)``). Default 0.
        maximize: ascend instead of descend.
        **decay: the decay keys of ``adamhd.decay.native`` (``decay="l2"`` by default;
            ``cautious_decay`` masks with the sign of ``exp_avg``).
    """

    name = "FCAdam"
    native_decay = True
    dtensor_reason = "its (K, *shape) gradient history is not sharded like the parameter"
    checks = {"betas": beta_pair, "eps": finite_nonneg, "alpha": in_open_closed_unit,
              "history": integer(1), "seed": integer(0), "drop": flag}

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        alpha: float = 0.9,
        history: int = 10,
        drop: bool = True,
        seed: int = 0,
        *,
        maximize: bool = False,
        **decay: Any,
    ) -> None:
        super().__init__(params, locals())

    def _check_history(self) -> None:
        """A changed ``history`` cannot reuse the saved ring buffer: refuse before any change."""
        for group in self.param_groups:
            for p in self.params_with_grad(group):
                held = self.state[p].get("grad_history")
                if held is not None and held.shape[0] != group["history"]:
                    raise ValueError(f"FCAdam: the state holds {held.shape[0]} past gradients, "
                                     f"the group asks history={group['history']}")

    def check_grads(self) -> None:
        super().check_grads()
        self._check_history()

    def new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {"step": new_step(p), "grad_history": p.new_zeros((group["history"], *p.shape)),
                "exp_avg": zero_moment(p), "exp_avg_sq": zero_moment(p)}

    def group_step(self, params: list[Tensor], grads: list[Tensor],
                   states: list[dict[str, Tensor]], hyper: dict[str, Any]) -> None:
        fcadam(FCAdamGroup(
            params=params,
            grads=grads,
            **state_lists(states, histories="grad_history", exp_avgs="exp_avg",
                          exp_avg_sqs="exp_avg_sq", steps="step"),
            lr=lr_value(hyper["lr"]), betas=tuple(hyper["betas"]), eps=hyper["eps"],
            states=states, step_decay=hyper["step_decay"], alpha=hyper["alpha"],
            drop=hyper["drop"],
            seed=hyper["seed"],
        ))
