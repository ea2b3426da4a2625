r"""``Adafactor`` (Shazeer & Stern, arXiv 1804.04235, Algorithms 4 and 5 with relative steps).

Per parameter tensor ``p`` with gradient ``g``, step ``t``::

    beta2_t = 1 - t**decay_rate                          (decay_rate = -0.8)
    rho_t   = min(lr, 1/sqrt(t))  (relative_step)   or  lr
    alpha_t = max(eps2, rms(p)) * rho_t  (scale_parameter)   or  rho_t
    G2      = g**2 + eps1
    dim >= 2 (factored over the last two dims):
        R = lerp(R, mean_cols(G2), 1 - beta2_t);  C = lerp(C, mean_rows(G2), 1 - beta2_t)
        1/sqrt(V) = sqrt((mean(R)/R) / C)            ratio first, sqrt last (the seed's fix)
    else:  V = lerp(V, G2, 1 - beta2_t)
    U = g / sqrt(V);   U = U / max(1, rms(U)/d);    p = p - alpha_t * U

Defaults (the paper's): ``lr=1e-2`` (the cap of the relative step), ``eps1=1e-30, eps2=1e-3,
d=1, decay_rate=-0.8``, ``relative_step=True, scale_parameter=True``. The paper's row/column sums
are kept as means (the same ``V``, no overflow for wide matrices).

Precision: transformers/fairseq take ``rsqrt`` of each factor and multiply
(``rsqrt(R/mean(R)) * rsqrt(C)``), torch.optim.Adafactor forms ``V = R C / mean(R)`` and takes
``rsqrt``. The seed's fix forms the ratio ``mean(R)/(R C)`` and takes ``sqrt`` last; in float32
``(mean(R)/R)/C`` overflows where a whole row and a whole column have (near-)zero gradients (a
0 gradient then makes NaN), so where the ratio leaves the normal float range the transformers
form is used instead (measured in docs/optimizers.md: the most precise form, never inf).
Factors ``R, C`` are float32 (float64 for float64 weights); ``V`` of vectors has the weight's
dtype. torch requires ``d >= 1``; any ``d > 0`` is accepted here.

Differences from torch.optim.Adafactor: ``eps1`` is added to ``g**2`` (the paper) where torch
clamps ``V`` at ``eps1**2`` and ``mean(R)`` at ``eps1`` (its ``eps1`` defaults to the dtype's
machine epsilon); the two agree to rounding where ``g**2 >> eps1``. Both scale decoupled
``weight_decay`` by ``lr``. ``rms(U)`` clips with ``max(1, rms/d)`` (pytorch_optimizer has had
``clamp_max`` there, see docs/optimizers.md). No first moment (``beta1``): the paper's main
configuration; use ``with_decoupled_decay`` for Huber decay.

Sharded DTensor (FSDP2) parameters are rejected: ``C``, ``mean(R)``, ``rms(U)`` and ``rms(p)``
need cross-shard reductions that this class does not do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from adamhd.optim._base import (
    CheckedOptimizer,
    Params,
    check,
    check_lr,
    finite_nonneg,
    new_step,
    stat_dtype,
)

__all__ = ["Adafactor", "AdafactorHyper", "adafactor", "inverse_sqrt_factored", "rms"]


@dataclass(frozen=True)
class AdafactorHyper:
    lr: float
    eps1: float
    eps2: float
    d: float
    decay_rate: float
    relative_step: bool
    scale_parameter: bool
    weight_decay: float


def rms(x: Tensor) -> Tensor:
    """Root mean square of the whole tensor (0 for an empty one)."""
    return x.norm() / math.sqrt(max(x.numel(), 1))


def _mean(x: Tensor, dim: int) -> Tensor:
    return x.sum(dim) / max(x.shape[dim], 1)


def inverse_sqrt_factored(row: Tensor, col: Tensor) -> Tensor:
    """``1/sqrt(V)`` for ``V = R C / mean(R)``: the ratio ``mean(R)/(R C)`` first and one ``sqrt``
    last; where that ratio leaves the normal float range (it overflows long before its square
    root would), ``rsqrt(R/mean(R)) * rsqrt(C)`` instead."""
    mean = _mean(row, -1).unsqueeze(-1)
    ratio = mean / row
    info = torch.finfo(ratio.dtype)
    if row.numel() and col.numel():  # bounds from the factors: O(n + m), not O(n m)
        high, low = ratio.max() / col.min(), ratio.min() / col.max()
        if bool((high <= info.max) & (low >= info.tiny)):
            return (ratio.unsqueeze(-1) / col.unsqueeze(-2)).sqrt_()
    inverse_v = ratio.unsqueeze(-1) / col.unsqueeze(-2)
    in_range = (inverse_v >= info.tiny) & (inverse_v <= info.max)
    fallback = (row / mean).rsqrt().unsqueeze(-1) * col.rsqrt().unsqueeze(-2)
    return torch.where(in_range, inverse_v.sqrt_(), fallback)


def _one(p: Tensor, g: Tensor, state: dict[str, Tensor], h: AdafactorHyper) -> None:
    state["step"] += 1
    t = float(state["step"])
    one_minus_beta2 = t**h.decay_rate
    rho = min(h.lr, 1.0 / math.sqrt(t)) if h.relative_step else h.lr
    g2 = g.to(stat_dtype(p)).square().add_(h.eps1)
    if "exp_avg_sq_row" in state:
        row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
        row.lerp_(_mean(g2, -1), one_minus_beta2)
        col.lerp_(_mean(g2, -2), one_minus_beta2)
        update = inverse_sqrt_factored(row, col).mul_(g)
    else:
        v = state["exp_avg_sq"]
        v.lerp_(g2.to(v.dtype), one_minus_beta2)
        update = v.to(g2.dtype).rsqrt().mul_(g)
    clip = (rms(update) / h.d).clamp_(min=1.0)
    alpha = rho * rms(p.to(update.dtype)).clamp(min=h.eps2) if h.scale_parameter else rho
    if h.weight_decay != 0.0:
        p.mul_(1.0 - h.lr * h.weight_decay)
    p.addcmul_(update.to(p.dtype), -alpha / clip)


def adafactor(
    params: list[Tensor], grads: list[Tensor], states: list[dict[str, Tensor]], h: AdafactorHyper
) -> None:
    """One Adafactor step over lists of tensors (the math; the class gathers the lists)."""
    for p, g, state in zip(params, grads, states):
        _one(p, g, state, h)


class Adafactor(CheckedOptimizer):
    """Adafactor with relative steps and the precise factored ``1/sqrt(V)``; see the module
    docstring for formula, defaults and differences from torch and transformers.

    Args:
        params: parameters or parameter groups.
        lr: cap of the relative step ``rho_t`` (or ``rho`` itself with ``relative_step=False``).
        eps1, eps2, d, decay_rate: the paper's ``epsilon_1, epsilon_2, d`` and ``-c`` of
            ``beta2_t = 1 - t**-c``. Defaults 1e-30, 1e-3, 1.0, -0.8.
        relative_step, scale_parameter: see the formula. Defaults True.
        weight_decay: decoupled L2, ``p *= 1 - lr*weight_decay`` (as torch). Default 0.
        maximize: ascend instead of descend.
    """

    name = "Adafactor"
    stat_keys = ("exp_avg_sq_row", "exp_avg_sq_col")
    dtensor_reason = "its factors and RMS clips are not reduced across shards"
    hyper_type = AdafactorHyper

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-2,
        eps1: float = 1e-30,
        eps2: float = 1e-3,
        d: float = 1.0,
        decay_rate: float = -0.8,
        weight_decay: float = 0.0,
        *,
        relative_step: bool = True,
        scale_parameter: bool = True,
        maximize: bool = False,
    ) -> None:
        defaults = dict(lr=lr, eps1=eps1, eps2=eps2, d=d, decay_rate=decay_rate,
                        weight_decay=weight_decay, relative_step=relative_step,
                        scale_parameter=scale_parameter, maximize=maximize)
        super().__init__(params, defaults)

    def check_group(self, group: dict[str, Any]) -> None:
        check_lr(group)
        finite_nonneg("eps1", group["eps1"])
        finite_nonneg("eps2", group["eps2"])
        check("d", group["d"], lambda v: 0.0 < v < math.inf, "a finite number > 0")
        check("decay_rate", group["decay_rate"], lambda v: -1.0 <= v <= 0.0, "-1 <= value <= 0")
        finite_nonneg("weight_decay", group["weight_decay"])

    def init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        state = self.state[p]
        if not state:
            state["step"] = new_step(p)
            if p.dim() >= 2:
                kw = dict(dtype=stat_dtype(p), device=p.device)
                state["exp_avg_sq_row"] = torch.zeros(p.shape[:-1], **kw)
                state["exp_avg_sq_col"] = torch.zeros(p.shape[:-2] + p.shape[-1:], **kw)
            else:
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def group_step(self, params, grads, states, hyper) -> None:
        adafactor(params, grads, states, hyper)
