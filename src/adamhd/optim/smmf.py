r"""``SMMF``: square-matricised momentum factorisation (arXiv 2412.08894).

Each tensor of ``n`` elements is viewed as the most square matrix ``(n/k, k)``, ``k`` the largest
divisor of ``n`` with ``k <= sqrt(n)``. The state is the 1-bit sign of the first moment, bit-packed
8 per byte, and non-negative rank-1 factors ``(r, c)`` of ``|M|`` and of ``V``. Per step ``t``::

    M = sign * outer(r_M, c_M);   V = outer(r_V, c_V)                        (decompress)
    beta_m = beta * growth_rate**(t-1);   beta_v = 1 - t**decay_rate
    M = beta_m*M + (1-beta_m)*g;          V = beta_v*V + (1-beta_v)*g**2
    p = p - lr * M / (sqrt(V) + eps)                                          (no bias correction)
    sign = M >= 0;  (r_M, c_M) = nnmf(|M|);  (r_V, c_V) = nnmf(V)            (compress)

The sign is ``M >= 0``; the authors' code stores ``M > 0``: an element whose ``M`` is exactly 0
decompresses as ``+r*c`` here and ``-r*c`` there (their code read, not run here).

``nnmf(A)`` = (row sums, column sums), the factor of the shorter side divided by its total, so
``outer(r, c) = rowsum * colsum / total`` (exact for rank-1 ``A``). Default hyperparameters
(the authors'): ``lr=1e-3, beta=0.9, eps=1e-8, decay_rate=-0.5`` (they recommend -0.8 for
transformers), ``growth_rate=0.999``. Factors are float32 (float64 for float64 weights).

State: ``n/8`` bytes of signs plus ``4*(n/k + k)`` bytes per moment pair member, about 0.13
bytes per parameter for large tensors (AdamW: 8). ``weight_decay`` (default 0) is decoupled L2,
``p *= 1 - lr*wd``; the authors' optional coupled variant is not offered (use
``with_decoupled_decay`` for Huber or cautious decay). pytorch_optimizer has no SMMF.

Sharded DTensor (FSDP2) parameters are rejected: the square view and the factors mix elements
of different shards.
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
    in_unit,
    new_step,
    stat_dtype,
)

__all__ = ["SMMF", "SMMFHyper", "nnmf", "pack_signs", "smmf", "square_shape", "unpack_signs"]

_SHIFTS = torch.arange(8, dtype=torch.uint8)


@dataclass(frozen=True)
class SMMFHyper:
    lr: float
    beta: float
    eps: float
    decay_rate: float
    growth_rate: float
    weight_decay: float


def square_shape(n: int) -> tuple[int, int]:
    """``(n/k, k)`` with ``k`` the largest divisor of ``n`` not above ``sqrt(n)``."""
    k = max((i for i in range(1, math.isqrt(max(n, 1)) + 1) if n % i == 0), default=1)
    return (n // k, k)


def pack_signs(nonneg: Tensor) -> Tensor:
    """A bool tensor, flattened, as uint8: flag ``8*i + j`` is bit ``j`` of byte ``i``."""
    flat = nonneg.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    flags = flat.view(torch.uint8).view(-1, 8)
    packed = flags[:, 0].clone()
    for j in range(1, 8):
        packed |= flags[:, j] << j
    return packed


def _unpack_flags(packed: Tensor, n: int) -> Tensor:
    """The first ``n`` flags of ``pack_signs`` as uint8 zeros and ones."""
    return ((packed.unsqueeze(1) >> _SHIFTS.to(packed.device)) & 1).reshape(-1)[:n]


def unpack_signs(packed: Tensor, n: int) -> Tensor:
    """Inverse of ``pack_signs``: the first ``n`` flags as a bool tensor."""
    return _unpack_flags(packed, n).view(torch.bool)


def nnmf(a: Tensor) -> tuple[Tensor, Tensor]:
    """Rank-1 non-negative factors of ``a >= 0``: row and column sums, the shorter side's
    normalised by its total (left as is when the total is 0)."""
    rows, cols = a.sum(1), a.sum(0)
    short = rows if a.shape[0] < a.shape[1] else cols
    total = short.sum()
    short.div_(torch.where(total == 0, torch.ones_like(total), total))
    return rows, cols


def _one(p: Tensor, g: Tensor, state: dict[str, Tensor], h: SMMFHyper) -> None:
    state["step"] += 1
    t = float(state["step"])
    shape = square_shape(p.numel())
    g = g.reshape(shape).to(stat_dtype(p))
    flags = _unpack_flags(state["sign"], p.numel()).reshape(shape).view(torch.int8)
    m = torch.outer(state["row_m"], state["col_m"]).mul_(flags * 2 - 1)  # +1 where M >= 0
    v = torch.outer(state["row_v"], state["col_v"])
    beta_m = h.beta * h.growth_rate ** (t - 1.0)
    beta_v = 1.0 - t**h.decay_rate
    m.lerp_(g, 1.0 - beta_m)
    v.lerp_(g.square(), 1.0 - beta_v)
    update = m / (v.sqrt() + h.eps)
    if h.weight_decay != 0.0:
        p.mul_(1.0 - h.lr * h.weight_decay)
    p.sub_((update * h.lr).reshape(p.shape).to(p.dtype))
    state["sign"].copy_(pack_signs(m >= 0))
    for key, (r, c) in (("m", nnmf(m.abs())), ("v", nnmf(v))):
        state[f"row_{key}"].copy_(r)
        state[f"col_{key}"].copy_(c)


def smmf(
    params: list[Tensor], grads: list[Tensor], states: list[dict[str, Tensor]], h: SMMFHyper
) -> None:
    """One SMMF step over lists of tensors (the math; the class gathers the lists)."""
    for p, g, state in zip(params, grads, states):
        if p.numel():
            _one(p, g, state, h)


class SMMF(CheckedOptimizer):
    """Square-matricised momentum factorisation; see the module docstring for the formula.

    Args:
        params: parameters or parameter groups.
        lr: learning rate. Default 1e-3.
        beta: first-moment coefficient at step 1. Default 0.9.
        eps: added to ``sqrt(V)``. Default 1e-8.
        decay_rate: ``beta_v = 1 - t**decay_rate``, in [-1, 0]. Default -0.5.
        growth_rate: ``beta_m = beta * growth_rate**(t-1)``, in (0, 1]. Default 0.999.
        weight_decay: decoupled L2, ``p *= 1 - lr*weight_decay``. Default 0.
        maximize: ascend instead of descend.
    """

    name = "SMMF"
    stat_keys = ("row_m", "col_m", "row_v", "col_v")
    dtensor_reason = "its square view and factors mix elements of different shards"
    hyper_type = SMMFHyper

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        beta: float = 0.9,
        eps: float = 1e-8,
        decay_rate: float = -0.5,
        growth_rate: float = 0.999,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
    ) -> None:
        defaults = dict(lr=lr, beta=beta, eps=eps, decay_rate=decay_rate,
                        growth_rate=growth_rate, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults)

    def check_group(self, group: dict[str, Any]) -> None:
        check_lr(group)
        in_unit("beta", group["beta"])
        finite_nonneg("eps", group["eps"])
        check("decay_rate", group["decay_rate"], lambda v: -1.0 <= v <= 0.0, "-1 <= value <= 0")
        check("growth_rate", group["growth_rate"], lambda v: 0.0 < v <= 1.0, "0 < value <= 1")
        finite_nonneg("weight_decay", group["weight_decay"])

    def init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        state = self.state[p]
        if not state:
            rows, cols = square_shape(p.numel())
            kw = dict(dtype=stat_dtype(p), device=p.device)
            state["step"] = new_step(p)
            state["sign"] = torch.zeros((p.numel() + 7) // 8, dtype=torch.uint8, device=p.device)
            for key in ("m", "v"):
                state[f"row_{key}"] = torch.zeros(rows, **kw)
                state[f"col_{key}"] = torch.zeros(cols, **kw)
        return state

    def group_step(self, params, grads, states, hyper) -> None:
        smmf(params, grads, states, hyper)
