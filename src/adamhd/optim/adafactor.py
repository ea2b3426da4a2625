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

Sharded DTensor (FSDP2, tensor-parallel) parameters: the factors are DTensors split like the
weight along the dims they keep (``R`` of an FSDP2 weight is sharded by rows, ``C`` replicated);
``C``, ``mean(R)``, ``rms(U)`` and ``rms(p)`` are completed across shards by
``adamhd.distributed.all_reduce_partials``, so every rank computes one process's step.
Collectives per step: three per tensor on the loop path, three per batch of tensors on the
foreach path (``foreach=True``, batches of up to ``optim._paths.BATCH_ELEMENTS`` elements), which
runs the elementwise work in ``torch._foreach_*`` calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from adamhd.decay.native import StepDecay, decayed_update_
from adamhd.distributed import (
    all_reduce_partials,
    is_dtensor,
    like_param,
    local_shard,
    zeros_over,
)
from adamhd.optim._base import (
    CheckedOptimizer,
    Params,
    decay_exponent,
    finite_nonneg,
    new_step,
    positive,
    stat_dtype,
    zero_moment,
)
from adamhd.optim._paths import ForeachOption, batches

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
    step_decay: StepDecay | None
    foreach: bool = False


def rms(x: Tensor) -> Tensor:
    """Root mean square of the whole tensor (0 for an empty one)."""
    return x.norm() / math.sqrt(max(x.numel(), 1))


def _mean(x: Tensor, dim: int) -> Tensor:
    return x.sum(dim) / max(x.shape[dim], 1)


def inverse_sqrt_factored(row: Tensor, col: Tensor, mean: Tensor | None = None) -> Tensor:
    """``1/sqrt(V)`` for ``V = R C / mean(R)``: the ratio ``mean(R)/(R C)`` first and one ``sqrt``
    last; where that ratio leaves the normal float range (it overflows long before its square
    root would), ``rsqrt(R/mean(R)) * rsqrt(C)`` instead. ``mean``: ``mean(R)`` over its last
    dim, keepdim (given when ``row`` is a shard of the whole factor)."""
    mean = _mean(row, -1).unsqueeze(-1) if mean is None else mean
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


def _whole_norms(owners: list[Tensor], xs: list[Tensor]) -> list[Tensor]:
    """L2 norm of each whole tensor: ``xs[i]`` is (the local shard of) ``owners[i]``'s values;
    a sharded one's squared local norm is summed across ranks (``all_reduce_partials``)."""
    norms = [x.norm() for x in xs]
    sharded = [is_dtensor(o) for o in owners]
    parts = [n.square() if s else n for n, s in zip(norms, sharded)]
    totals = all_reduce_partials(owners, parts)
    return [t.sqrt() if s else t for t, s in zip(totals, sharded)]


def _factor_means(p: Tensor, g2: Tensor) -> tuple[Tensor, Tensor]:
    """Means of ``g2`` (``p``'s local shard) over the last and the second-to-last dim, whole."""
    rows, cols = all_reduce_partials([p, p], [g2.sum(-1), g2.sum(-2)], [(-1,), (-2,)])
    return rows / max(p.shape[-1], 1), cols / max(p.shape[-2], 1)


def _row_mean(row: Tensor) -> Tensor:
    """``mean(R)`` over ``R``'s last dim, keepdim, of the whole factor ``row``."""
    (total,) = all_reduce_partials([row], [local_shard(row).sum(-1)], [(-1,)])
    return (total / max(row.shape[-1], 1)).unsqueeze(-1)


def _step_sizes(t: float, h: AdafactorHyper) -> tuple[float, float]:
    """``(1 - beta2_t, rho_t)``."""
    rho = min(h.lr, 1.0 / math.sqrt(t)) if h.relative_step else h.lr
    return t**h.decay_rate, rho


def _one(p: Tensor, g: Tensor, state: dict[str, Tensor], h: AdafactorHyper) -> None:
    state["step"] += 1
    one_minus_beta2, rho = _step_sizes(float(state["step"]), h)
    p_local, g = local_shard(p), local_shard(g)
    g2 = g.to(stat_dtype(p)).square().add_(h.eps1)
    if "exp_avg_sq_row" in state:
        row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
        row_mean, col_mean = _factor_means(p, g2)
        local_shard(row).lerp_(row_mean, one_minus_beta2)
        local_shard(col).lerp_(col_mean, one_minus_beta2)
        mean = _row_mean(row) if is_dtensor(row) else None
        update = inverse_sqrt_factored(local_shard(row), local_shard(col), mean).mul_(g)
    else:
        v = local_shard(state["exp_avg_sq"])
        v.lerp_(g2.to(v.dtype), one_minus_beta2)
        update = v.to(g2.dtype).rsqrt().mul_(g)
    norm_u, norm_p = _whole_norms([p, p], [update, p_local.to(update.dtype)])
    size = math.sqrt(max(p.numel(), 1))
    clip = (norm_u / size / h.d).clamp_(min=1.0)
    alpha = rho * (norm_p / size).clamp(min=h.eps2) if h.scale_parameter else rho
    step_update = update.to(p.dtype)
    decayed_update_(h.step_decay, [p], [state], h.lr,
                    partial(p_local.addcmul_, step_update, -alpha / clip),
                    signs=[like_param(p, step_update)], foreach=False)


def _foreach(
    params: list[Tensor], grads: list[Tensor], states: list[dict[str, Tensor]], h: AdafactorHyper
) -> None:
    """The step of ``_one`` on tensors that share a step count: the elementwise work in
    ``torch._foreach_*`` calls, each kind of cross-shard statistic in one reduction."""
    one_minus_beta2, rho = _step_sizes(float(states[0]["step"]), h)
    locals_ = [local_shard(p) for p in params]
    g_stat = [local_shard(g).to(stat_dtype(p)) for p, g in zip(params, grads)]
    g2 = torch._foreach_mul(g_stat, g_stat)
    torch._foreach_add_(g2, h.eps1)
    factored = [i for i, s in enumerate(states) if "exp_avg_sq_row" in s]
    plain = [i for i, s in enumerate(states) if "exp_avg_sq_row" not in s]
    updates: list[Tensor | None] = [None] * len(params)
    if factored:
        _foreach_factored(factored, params, g2, states, one_minus_beta2, updates)
        torch._foreach_mul_([updates[i] for i in factored], [g_stat[i] for i in factored])
    if plain:
        vs = [local_shard(states[i]["exp_avg_sq"]) for i in plain]
        torch._foreach_lerp_(vs, [g2[i].to(v.dtype) for i, v in zip(plain, vs)], one_minus_beta2)
        inv = torch._foreach_rsqrt([v.to(g2[i].dtype) for i, v in zip(plain, vs)])
        torch._foreach_mul_(inv, [g_stat[i] for i in plain])
        for i, u in zip(plain, inv):
            updates[i] = u
    _foreach_apply(params, states, locals_, updates, rho, h)  # type: ignore[arg-type]


def _foreach_factored(index, params, g2, states, one_minus_beta2, updates) -> None:
    """Row and column factors of the tensors ``index``, then their ``1/sqrt(V)`` in ``updates``."""
    owners = [params[i] for i in index for _ in (0, 1)]
    parts = [g2[i].sum(d) for i in index for d in (-1, -2)]
    dims = [(d,) for _ in index for d in (-1, -2)]
    totals = all_reduce_partials(owners, parts, dims)
    sizes = [max(params[i].shape[d], 1) for i in index for d in (-1, -2)]
    factors = [local_shard(states[i][k]) for i in index
               for k in ("exp_avg_sq_row", "exp_avg_sq_col")]
    torch._foreach_lerp_(factors, torch._foreach_div(totals, sizes), one_minus_beta2)
    rows = [states[i]["exp_avg_sq_row"] for i in index]
    row_sums = all_reduce_partials(rows, [local_shard(r).sum(-1) for r in rows],
                                   [(-1,)] * len(rows))
    for k, i in enumerate(index):
        mean = (row_sums[k] / max(rows[k].shape[-1], 1)).unsqueeze(-1)
        updates[i] = inverse_sqrt_factored(factors[2 * k], factors[2 * k + 1], mean)


def _foreach_apply(params, states, locals_, updates, rho, h: AdafactorHyper) -> None:
    """``p -= alpha/clip * U`` (with the group's decay around it) for every tensor, the norms
    in one reduction."""
    n = len(params)
    owners = params + params
    p_stat = [x.to(u.dtype) for x, u in zip(locals_, updates)]
    norms = _whole_norms(owners, list(updates) + p_stat)
    sizes = [math.sqrt(max(p.numel(), 1)) for p in params]
    clips = [(norm / size / h.d).clamp_(min=1.0) for norm, size in zip(norms[:n], sizes)]
    if h.scale_parameter:
        alphas = [rho * (norm / size).clamp(min=h.eps2) for norm, size in zip(norms[n:], sizes)]
    else:
        alphas = [rho] * n
    coefs = [(-a / c).to(u.dtype) for a, c, u in zip(alphas, clips, updates)]
    torch._foreach_mul_(updates, coefs)  # -alpha/clip * U: the sign of -U
    steps = [u.to(x.dtype) for u, x in zip(updates, locals_)]
    signs = [like_param(p, s.neg()) for p, s in zip(params, steps)] if _cautious(h) else None
    decayed_update_(h.step_decay, params, states, h.lr,
                    partial(torch._foreach_add_, locals_, steps), signs=signs)


def _cautious(h: AdafactorHyper) -> bool:
    return h.step_decay is not None and h.step_decay.rule.cautious


def adafactor(
    params: list[Tensor], grads: list[Tensor], states: list[dict[str, Tensor]], h: AdafactorHyper
) -> None:
    """One Adafactor step over lists of tensors (the math; the class gathers the lists):
    ``h.foreach`` runs the foreach path on batches of tensors that share a step count."""
    if not h.foreach:
        for p, g, state in zip(params, grads, states):
            _one(p, g, state, h)
        return
    torch._foreach_add_([s["step"] for s in states], 1.0)
    for same_step in _by_step(states).values():
        for batch in batches([params[i] for i in same_step]):
            index = [same_step[k] for k in batch]
            _foreach([params[i] for i in index], [grads[i] for i in index],
                     [states[i] for i in index], h)


def _by_step(states: list[dict[str, Tensor]]) -> dict[float, list[int]]:
    """Indices of the tensors with each step count (one group when trained together)."""
    out: dict[float, list[int]] = {}
    for i, s in enumerate(states):
        out.setdefault(float(s["step"]), []).append(i)
    return out


class Adafactor(ForeachOption, CheckedOptimizer):
    """Adafactor with relative steps and the precise factored ``1/sqrt(V)``; see the module
    docstring for formula, defaults and differences from torch and transformers.

    Args:
        params: parameters or parameter groups.
        lr: cap of the relative step ``rho_t`` (or ``rho`` itself with ``relative_step=False``).
        eps1, eps2, d, decay_rate: the paper's ``epsilon_1, epsilon_2, d`` and ``-c`` of
            ``beta2_t = 1 - t**-c``. Defaults 1e-30, 1e-3, 1.0, -0.8.
        relative_step, scale_parameter: see the formula. Defaults True.
        weight_decay: decoupled decay coefficient, by default L2 ``p *= 1 - lr*weight_decay``
            (as torch). Default 0.
        maximize: ascend instead of descend.
        foreach: ``torch._foreach_*`` path (``None``, the default: as torch chooses, foreach on
            CUDA); the same step to rounding.
        **decay: the decay keys of ``adamhd.decay.native`` (``decay="l2"`` by default; Huber,
            proximal, cautious with the sign of ``U``, ``decay_scaling``).
    """

    name = "Adafactor"
    native_decay = True
    stat_keys = ("exp_avg_sq_row", "exp_avg_sq_col")
    hyper_type = AdafactorHyper
    checks = {"eps1": finite_nonneg, "eps2": finite_nonneg, "d": positive,
              "decay_rate": decay_exponent}

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
        foreach: bool | None = None,
        **decay: Any,
    ) -> None:
        super().__init__(params, locals())

    def new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        if p.dim() < 2:
            return {"step": new_step(p), "exp_avg_sq": zero_moment(p)}
        dims, dtype = list(range(p.dim())), stat_dtype(p)
        return {"step": new_step(p), "exp_avg_sq_row": zeros_over(p, dims[:-1], dtype),
                "exp_avg_sq_col": zeros_over(p, dims[:-2] + dims[-1:], dtype)}

    def group_step(self, params, grads, states, hyper) -> None:
        adafactor(params, grads, states, hyper)
