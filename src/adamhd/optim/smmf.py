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

Sharded DTensor parameters split along dim 0 (FSDP2): each rank holds a range of the flattened
tensor, so a window of the square view. The factors are kept whole on every rank; each rank adds
its window's row and column sums and ``adamhd.distributed.all_reduce_partials`` completes them
(one collective per tensor per step on the loop path, one per batch of tensors on the foreach
path), so every rank computes one process's step. The packed
signs are each rank's own (``n_local/8`` bytes, a plain tensor): a checkpoint of a sharded SMMF
must be reloaded on the same sharding (per-rank ``state_dict``; ``torch.distributed.checkpoint``
resharding of the signs is not supported). Other splits (tensor parallel) are refused.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from adamhd.decay.native import StepDecay, decayed_update_
from adamhd.distributed import all_reduce_partials, is_dtensor, like_param, local_shard
from adamhd.optim._base import (
    CheckedOptimizer,
    Params,
    decay_exponent,
    finite_nonneg,
    in_open_closed_unit,
    in_unit,
    new_step,
    stat_dtype,
)
from adamhd.optim._paths import ForeachOption, batches

__all__ = ["SMMF", "SMMFHyper", "nnmf", "pack_signs", "smmf", "square_shape", "unpack_signs"]

_SHIFTS = torch.arange(8, dtype=torch.uint8)
_TO_SIGN_BIT = 31 - torch.arange(8, dtype=torch.int32)  # bit j of a byte -> bit 31
_SIGN_BIT = torch.iinfo(torch.int32).min


@dataclass(frozen=True)
class SMMFHyper:
    lr: float
    beta: float
    eps: float
    decay_rate: float
    growth_rate: float
    step_decay: StepDecay | None
    foreach: bool = False


@functools.lru_cache(maxsize=4096)
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
    return (flags << _SHIFTS.to(flags.device)).sum(1, dtype=torch.uint8)


def _unpack_flags(packed: Tensor, n: int) -> Tensor:
    """The first ``n`` flags of ``pack_signs`` as uint8 zeros and ones."""
    return ((packed.unsqueeze(1) >> _SHIFTS.to(packed.device)) & 1).reshape(-1)[:n]


def unpack_signs(packed: Tensor, n: int) -> Tensor:
    """Inverse of ``pack_signs``: the first ``n`` flags as a bool tensor."""
    return _unpack_flags(packed, n).view(torch.bool)


def _sums(a: Tensor) -> tuple[Tensor, Tensor]:
    return a.sum(1), a.sum(0)


def _normalise(rows: Tensor, cols: Tensor, shape: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The shorter side of the square view divided by its total (left as is when it is 0)."""
    short = rows if shape[0] < shape[1] else cols
    total = short.sum()
    short.div_(torch.where(total == 0, torch.ones_like(total), total))
    return rows, cols


def nnmf(a: Tensor) -> tuple[Tensor, Tensor]:
    """Rank-1 non-negative factors of ``a >= 0``: row and column sums, the shorter side's
    normalised by its total (left as is when the total is 0)."""
    return _normalise(*_sums(a), tuple(a.shape))  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Window:
    """The elements ``[start, stop)`` of the flattened tensor that this rank holds (all of it
    unless the tensor is an FSDP2 shard), placed in the square view of shape ``shape``."""

    shape: tuple[int, int]
    start: int
    stop: int

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.stop == self.shape[0] * self.shape[1]

    @property
    def rows(self) -> slice:
        """The square rows the window touches."""
        k = self.shape[1]
        return slice(self.start // k, -(-self.stop // k))

    @property
    def offset(self) -> int:
        """Where the window begins in the first of its rows."""
        return self.start - self.rows.start * self.shape[1]


def _dim0_shard(p: Tensor) -> tuple[int, int] | str:
    """``(first row, rows)`` of ``p``'s local shard when it is split along dim 0 only (FSDP2),
    else why SMMF cannot run on it (its square view needs a contiguous range of elements)."""
    placements = p.placements  # type: ignore[attr-defined]
    shards = [(md, pl) for md, pl in enumerate(placements) if pl.is_shard()]
    if any(pl.is_partial() for pl in placements) or len(shards) > 1 or (
            shards and shards[0][1].dim % max(p.dim(), 1) != 0):
        return (f"SMMF needs each rank's shard to be a range of the flattened tensor (Shard(0) on "
                f"one mesh dimension, as FSDP2 makes it); got placements {tuple(placements)}")
    if not shards:
        return (0, p.shape[0] if p.dim() else 1)
    mesh_dim = shards[0][0]
    mesh = p.device_mesh  # type: ignore[attr-defined]
    size, coord = mesh.size(mesh_dim), mesh.get_local_rank(mesh_dim)
    chunk = -(-p.shape[0] // size)  # torch.chunk's split, as DTensor's Shard(0)
    first = min(coord * chunk, p.shape[0])
    return (first, local_shard(p).shape[0])


def _window(p: Tensor) -> _Window:
    n = p.numel()
    if not is_dtensor(p) or p.dim() == 0:
        return _Window(square_shape(n), 0, n)
    shard = _dim0_shard(p)
    if isinstance(shard, str):
        raise RuntimeError(shard)
    per_row = n // max(p.shape[0], 1) if p.shape[0] else 0
    return _Window(square_shape(n), shard[0] * per_row, (shard[0] + shard[1]) * per_row)


def _expand(row: Tensor, col: Tensor, w: _Window) -> Tensor:
    """``outer(row, col)`` on the window: the square matrix, or the window's flat elements."""
    if w.whole:
        return torch.outer(row, col)
    block = torch.outer(row[w.rows], col).reshape(-1)
    return block[w.offset:w.offset + w.stop - w.start]


def _window_sums(a: Tensor, w: _Window) -> list[Tensor]:
    """Row and column sums of the square matrix that is ``a`` on the window, zero elsewhere."""
    if w.whole:
        return list(_sums(a))
    k = w.shape[1]
    block = a.new_zeros((w.rows.stop - w.rows.start) * k)
    block[w.offset:w.offset + a.numel()] = a
    rows = a.new_zeros(w.shape[0])
    rows[w.rows] = block.view(-1, k).sum(1)
    return [rows, block.view(-1, k).sum(0)]


def _factor_sums(m: Tensor, v: Tensor, w: _Window) -> list[Tensor]:
    """Row and column sums of ``|M|`` and ``V`` on the window (partial for a shard)."""
    return _window_sums(m.abs(), w) + _window_sums(v, w)


def _store(state: dict[str, Tensor], m: Tensor, sums: list[Tensor], w: _Window) -> None:
    """The new signs and rank-1 factors (from the whole tensor's ``sums``) into the state."""
    state["sign"].copy_(pack_signs(m >= 0))
    for key, (r, c) in (("m", sums[:2]), ("v", sums[2:])):
        r, c = _normalise(r, c, w.shape)
        state[f"row_{key}"].copy_(r)
        state[f"col_{key}"].copy_(c)


def _compress(params: list[Tensor], states: list[dict[str, Tensor]], ms: list[Tensor],
              vs: list[Tensor], windows: list[_Window]) -> None:
    """Signs and factors of the new ``M`` and ``V`` of every tensor; the sums of sharded
    tensors completed across ranks by one ``all_reduce_partials`` for all of them."""
    sums = [_factor_sums(m, v, w) for m, v, w in zip(ms, vs, windows)]
    owners = [p for p, w in zip(params, windows) if not w.whole for _ in range(4)]
    parts = [x for s, w in zip(sums, windows) if not w.whole for x in s]
    totals = iter(all_reduce_partials(owners, parts))
    for state, m, s, w in zip(states, ms, sums, windows):
        _store(state, m, s if w.whole else [next(totals) for _ in range(4)], w)


def _betas(t: float, h: SMMFHyper) -> tuple[float, float]:
    return h.beta * h.growth_rate ** (t - 1.0), 1.0 - t**h.decay_rate


def _one(p: Tensor, g: Tensor, state: dict[str, Tensor], h: SMMFHyper) -> None:
    state["step"] += 1
    beta_m, beta_v = _betas(float(state["step"]), h)
    w, p_local = _window(p), local_shard(p)
    view = w.shape if w.whole else (-1,)
    g = local_shard(g).reshape(view).to(stat_dtype(p))
    flags = _unpack_flags(state["sign"], g.numel()).reshape(view).view(torch.int8)
    m = _expand(state["row_m"], state["col_m"], w).mul_(flags * 2 - 1)  # +1 where M >= 0
    v = _expand(state["row_v"], state["col_v"], w)
    m.lerp_(g, 1.0 - beta_m)
    v.lerp_(g.square(), 1.0 - beta_v)
    update = m / (v.sqrt() + h.eps)
    step = (update * h.lr).reshape(p_local.shape).to(p.dtype)
    decayed_update_(h.step_decay, [p], [state], h.lr, partial(p_local.sub_, step),
                    signs=[like_param(p, step)], foreach=False)
    _compress([p], [state], [m], [v], [w])


def _negative_mask(packed: Tensor, n: int) -> Tensor:
    """int32 words with only the sign bit set where the flag of ``pack_signs`` is 0 (M < 0)."""
    words = packed.to(torch.int32).unsqueeze(1) << _TO_SIGN_BIT.to(packed.device)
    return words.bitwise_not_().bitwise_and_(_SIGN_BIT).reshape(-1)[:n]


def _moments(g: Tensor, state: dict[str, Tensor], w: _Window, beta_m: float,
             beta_v: float) -> tuple[Tensor, Tensor]:
    """The new ``M`` and ``V`` of the foreach path: ``M = beta_m*M + (1-beta_m)*g`` with
    ``beta_m*|M| = outer(beta_m*r, c) >= 0`` made negative by setting its float32 sign bit where
    the packed sign says so (4x faster on the CPU than a multiply by an int8 sign); ``V``
    likewise without signs. Float64 factors or a shard's window: the loop's formulas."""
    if not w.whole or g.dtype != torch.float32:
        flags = _unpack_flags(state["sign"], g.numel()).reshape(g.shape).view(torch.int8)
        m = _expand(state["row_m"], state["col_m"], w).mul_(flags * 2 - 1)
        v = _expand(state["row_v"], state["col_v"], w)
        return m.lerp_(g, 1.0 - beta_m), v.lerp_(g.square(), 1.0 - beta_v)
    m = torch.outer(state["row_m"] * beta_m, state["col_m"])
    m.view(torch.int32).bitwise_or_(_negative_mask(state["sign"], g.numel()).view(w.shape))
    m.add_(g, alpha=1.0 - beta_m)
    v = torch.outer(state["row_v"] * beta_v, state["col_v"]).addcmul_(g, g, value=1.0 - beta_v)
    return m, v


#: tensors of at most this many elements that share a square shape are stacked into one
#: ``(B, rows, cols)`` tensor on the foreach path (1000 tensors of 16: 0.41 s -> see docs/speed.md)
STACK_ELEMENTS = 4096


def _stacks(params, gs, windows) -> dict[tuple[int, int], list[int]]:
    """Indices of the small plain float32 tensors, by square shape (two or more of a shape)."""
    out: dict[tuple[int, int], list[int]] = {}
    for i, (p, g, w) in enumerate(zip(params, gs, windows)):
        if w.whole and not is_dtensor(p) and g.dtype == torch.float32 and (
                p.numel() <= STACK_ELEMENTS):
            out.setdefault(w.shape, []).append(i)
    return {shape: index for shape, index in out.items() if len(index) > 1}


def _stacked_moments(gs, states, beta_m, beta_v) -> tuple[Tensor, Tensor]:
    """``_moments`` of tensors of one square shape at once: ``M`` and ``V`` as ``(B, R, K)``."""
    g = torch.stack(gs)
    n = g[0].numel()

    def factors(key: str, beta: float) -> Tensor:
        rows = torch.stack([s[f"row_{key}"] for s in states]).mul_(beta)
        return rows.unsqueeze(2) * torch.stack([s[f"col_{key}"] for s in states]).unsqueeze(1)

    m = factors("m", beta_m)
    words = torch.stack([s["sign"] for s in states]).to(torch.int32).unsqueeze(2)
    words = (words << _TO_SIGN_BIT.to(g.device)).bitwise_not_().bitwise_and_(_SIGN_BIT)
    m.view(torch.int32).bitwise_or_(words.reshape(len(gs), -1)[:, :n].view(m.shape))
    m.add_(g, alpha=1.0 - beta_m)
    v = factors("v", beta_v).addcmul_(g, g, value=1.0 - beta_v)
    return m, v


def _stacked_store(states, m: Tensor, v: Tensor) -> None:
    """``_store`` of tensors of one square shape at once (``m``, ``v``: ``(B, R, K)``)."""
    flags = (m >= 0).reshape(len(states), -1)
    pad = (-flags.shape[1]) % 8
    if pad:
        flags = torch.cat([flags, flags.new_zeros(len(states), pad)], 1)
    packed = (flags.view(torch.uint8).view(len(states), -1, 8) << _SHIFTS.to(m.device))
    torch._foreach_copy_([s["sign"] for s in states],
                         list(packed.sum(2, dtype=torch.uint8).unbind(0)))
    short_rows = m.shape[1] < m.shape[2]
    for key, a in (("m", m.abs()), ("v", v)):
        rows, cols = a.sum(2), a.sum(1)
        short = rows if short_rows else cols
        total = short.sum(1, keepdim=True)
        short.div_(torch.where(total == 0, torch.ones_like(total), total))
        torch._foreach_copy_([s[f"row_{key}"] for s in states], list(rows.unbind(0)))
        torch._foreach_copy_([s[f"col_{key}"] for s in states], list(cols.unbind(0)))


def _foreach(params: list[Tensor], grads: list[Tensor], states: list[dict[str, Tensor]],
             h: SMMFHyper) -> None:
    """The step of ``_one`` on tensors that share a step count, the moments in fewer passes
    (``_moments``; small tensors of one square shape stacked) and the weight update in
    ``torch._foreach_*`` calls."""
    beta_m, beta_v = _betas(float(states[0]["step"]), h)
    windows = [_window(p) for p in params]
    p_locals = [local_shard(p) for p in params]
    gs = [local_shard(g).reshape(w.shape if w.whole else (-1,)).to(stat_dtype(p))
          for p, g, w in zip(params, grads, windows)]
    ms: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
    vs: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
    stacks = list(_stacks(params, gs, windows).values())
    stacked = []
    for index in stacks:
        m, v = _stacked_moments([gs[i] for i in index], [states[i] for i in index], beta_m,
                                beta_v)
        stacked.append((index, m, v))
        for i, mi, vi in zip(index, m.unbind(0), v.unbind(0)):
            ms[i], vs[i] = mi, vi
    rest = [i for i in range(len(params)) if ms[i] is None]
    for i in rest:
        ms[i], vs[i] = _moments(gs[i], states[i], windows[i], beta_m, beta_v)
    denoms = torch._foreach_sqrt(vs)
    torch._foreach_add_(denoms, h.eps)
    signs = None
    if h.step_decay is not None and h.step_decay.rule.cautious:
        signs = [like_param(p, m.view(x.shape)) for p, m, x in zip(params, ms, p_locals)]
    decayed_update_(h.step_decay, params, states, h.lr,
                    partial(_apply_foreach, p_locals, ms, denoms, h.lr), signs=signs)
    _compress([params[i] for i in rest], [states[i] for i in rest], [ms[i] for i in rest],
              [vs[i] for i in rest], [windows[i] for i in rest])
    for index, m, v in stacked:
        _stacked_store([states[i] for i in index], m, v)


def _apply_foreach(p_locals: list[Tensor], ms: list[Tensor], denoms: list[Tensor],
                   lr: float) -> None:
    """``p -= lr * M / (sqrt(V) + eps)``: one ``addcdiv`` on float32 contiguous weights."""
    direct = [i for i, (x, m) in enumerate(zip(p_locals, ms))
              if x.dtype == m.dtype and x.is_contiguous()]
    if direct:
        torch._foreach_addcdiv_([p_locals[i].view(ms[i].shape) for i in direct],
                                [ms[i] for i in direct], [denoms[i] for i in direct], -lr)
    for i in sorted(set(range(len(p_locals))) - set(direct)):
        x = p_locals[i]
        x.sub_((ms[i] / denoms[i] * lr).reshape(x.shape).to(x.dtype))


def smmf(
    params: list[Tensor], grads: list[Tensor], states: list[dict[str, Tensor]], h: SMMFHyper
) -> None:
    """One SMMF step over lists of tensors (the math; the class gathers the lists)."""
    index = [i for i, p in enumerate(params) if p.numel()]
    if not h.foreach:
        for i in index:
            _one(params[i], grads[i], states[i], h)
        return
    torch._foreach_add_([states[i]["step"] for i in index], 1.0)
    by_step: dict[float, list[int]] = {}
    for i in index:
        by_step.setdefault(float(states[i]["step"]), []).append(i)
    for same_step in by_step.values():
        for batch in batches([params[i] for i in same_step]):
            group = [same_step[k] for k in batch]
            _foreach([params[i] for i in group], [grads[i] for i in group],
                     [states[i] for i in group], h)


class SMMF(ForeachOption, CheckedOptimizer):
    """Square-matricised momentum factorisation; see the module docstring for the formula.

    Args:
        params: parameters or parameter groups.
        lr: learning rate. Default 1e-3.
        beta: first-moment coefficient at step 1. Default 0.9.
        eps: added to ``sqrt(V)``. Default 1e-8.
        decay_rate: ``beta_v = 1 - t**decay_rate``, in [-1, 0]. Default -0.5.
        growth_rate: ``beta_m = beta * growth_rate**(t-1)``, in (0, 1]. Default 0.999.
        weight_decay: decoupled decay coefficient, by default L2 ``p *= 1 - lr*weight_decay``.
            Default 0.
        maximize: ascend instead of descend.
        foreach: the foreach path (``None``, the default: as torch chooses, foreach on CUDA):
            the moments in fewer passes and the update in ``torch._foreach_*`` calls; the
            same step to rounding.
        **decay: the decay keys of ``adamhd.decay.native`` (``decay="l2"`` by default; Huber,
            proximal, cautious with the sign of ``M``, ``decay_scaling``).
    """

    name = "SMMF"
    native_decay = True
    stat_keys = ("row_m", "col_m", "row_v", "col_v")
    hyper_type = SMMFHyper
    checks = {"beta": in_unit, "eps": finite_nonneg, "decay_rate": decay_exponent,
              "growth_rate": in_open_closed_unit}

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
        foreach: bool | None = None,
        **decay: Any,
    ) -> None:
        super().__init__(params, locals())

    def new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        rows, cols = square_shape(p.numel())
        kw = dict(dtype=stat_dtype(p), device=p.device)
        signs = (local_shard(p).numel() + 7) // 8  # of this rank's shard
        state = {"step": new_step(p),
                 "sign": torch.zeros(signs, dtype=torch.uint8, device=p.device)}
        for key in ("m", "v"):
            state[f"row_{key}"] = torch.zeros(rows, **kw)
            state[f"col_{key}"] = torch.zeros(cols, **kw)
        return state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if is_dtensor(p) and p.dim() and isinstance(reason := _dim0_shard(p), str):
                raise RuntimeError(reason)
        super().add_param_group({**param_group, "params": params})

    def group_step(self, params, grads, states, hyper) -> None:
        smmf(params, grads, states, hyper)
