r"""``SM3`` (Anil, Gupta, Koren, Singer, arXiv 1901.11150): SM3-II with momentum.

A tensor of shape ``(n_1, ..., n_k)`` keeps one accumulator per dimension, ``a_d`` of shape
``(n_d,)`` (the cover by slices; a vector keeps a full accumulator, like Adagrad). Per step::

    nu  = min_d a_d[i_d] + g**2            (elementwise; each a_d broadcast along its dimension)
    a_d = max of nu over all dims but d
    u   = g / sqrt(nu + eps)               (eps=1e-30: the paper's 0/0 = 0)
    m   = momentum*m + (1 - momentum)*u    (momentum=0 keeps no m)
    p   = p - lr*m

State: ``sum(n_d)`` floats (plus ``n`` for momentum), against Adagrad's ``n``. Defaults:
``lr=0.1, momentum=0.9`` (the authors' experiments; the paper's algorithm has no momentum),
``eps=1e-30``. Accumulators are float32 (float64 for float64 weights).

Why SM3 and not an Amos-style shared second moment: SM3 is a complete published algorithm with an
exact definition to test against and sublinear memory with a per-element (not per-tensor) step
size; Amos's shared ``v`` is one part of a larger method whose other parts (its adaptive decay and
schedule) would duplicate this package's decay components.

pytorch_optimizer's SM3 (4.1.0) computes the same step, momentum included (it also lerps the
preconditioned update; float64 runs with ``momentum=0.9`` agree to 2e-16,
tests/optim/test_peers.py); its default is ``momentum=0`` and it adds an EMA variant
(``beta``); this class keeps the paper's accumulation (``beta=0``). ``weight_decay`` (default
0) is decoupled L2, ``p *= 1 - lr*wd``.

Sharded DTensor (FSDP2, tensor-parallel) parameters: ``a_d`` is a DTensor split like the weight
along dim ``d`` and replicated otherwise; the slice maxima over a split dim are completed by
``adamhd.distributed.all_reduce_partials`` (``max``): one collective per tensor on the loop
path, one per batch of tensors on the foreach path (``foreach=True``: the elementwise work in
``torch._foreach_*`` calls on batches of up to ``optim._paths.BATCH_ELEMENTS`` elements).
"""

from __future__ import annotations

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
    finite_nonneg,
    in_unit,
    stat_dtype,
    zero_moment,
)
from adamhd.optim._paths import ForeachOption, batches
from adamhd.state import Entry

__all__ = ["SM3", "SM3Hyper", "sm3"]


@dataclass(frozen=True)
class SM3Hyper:
    lr: float
    momentum: float
    eps: float
    step_decay: StepDecay | None
    foreach: bool = False


def _accumulator_keys(p: Tensor) -> list[str]:
    return [f"accumulator_{d}" for d in range(p.dim())] if p.dim() >= 2 else ["accumulator"]


def _broadcast(acc: Tensor, dim: int, ndim: int) -> Tensor:
    return acc.reshape([-1 if d == dim else 1 for d in range(ndim)])


def _cover_min(accs: list[Tensor], ndim: int) -> Tensor:
    """``min_d a_d[i_d]`` over the tensor's index space (the accumulators broadcast)."""
    nu = _broadcast(accs[0], 0, ndim)
    for d, acc in enumerate(accs[1:], start=1):
        nu = torch.minimum(nu, _broadcast(acc, d, ndim))
    return nu


def _slice_maxima(p: Tensor, nu: Tensor, accs: list[Tensor]) -> list[Tensor]:
    """``max`` of ``nu`` (``p``'s local shard) over all dims but ``d``, for each ``d``: local
    maxima, completed across shards by ``all_reduce_partials`` (``max``) where a reduced dim is
    split. An empty local shard contributes zeros (``nu >= 0``); an empty tensor keeps ``accs``."""
    others = [tuple(i for i in range(p.dim()) if i != d) for d in range(p.dim())]
    if nu.numel():
        local = [nu.amax(dim=o) for o in others]
    elif is_dtensor(p):
        local = [torch.zeros_like(acc) for acc in accs]
    else:
        return accs
    return all_reduce_partials([p] * p.dim(), local, others, op="max")


def _one(p: Tensor, g: Tensor, state: dict[str, Tensor], h: SM3Hyper) -> None:
    g = local_shard(g).to(stat_dtype(p))
    p_local = local_shard(p)
    if p.dim() >= 2:
        accs = [local_shard(state[k]) for k in _accumulator_keys(p)]
        nu = _cover_min(accs, p.dim())
        nu = nu + g.square()
        for acc, new in zip(accs, _slice_maxima(p, nu, accs)):
            acc.copy_(new)
    else:
        acc = local_shard(state["accumulator"])
        acc.add_(g.square())
        nu = acc
    update = g / (nu + h.eps).sqrt()
    if h.momentum:
        m = local_shard(state["momentum_buffer"])
        m.lerp_(update.to(m.dtype), 1.0 - h.momentum)
        update = m
    step = (update * h.lr).to(p.dtype)
    decayed_update_(h.step_decay, [p], [state], h.lr, partial(p_local.sub_, step),
                    signs=[like_param(p, step)], foreach=False)


def _foreach(
    params: list[Tensor], grads: list[Tensor], states: list[dict[str, Tensor]], h: SM3Hyper
) -> None:
    """The step of ``_one`` with the elementwise work in ``torch._foreach_*`` calls and the slice
    maxima of all tensors in one reduction."""
    g_stat = [local_shard(g).to(stat_dtype(p)) for p, g in zip(params, grads)]
    g2 = torch._foreach_mul(g_stat, g_stat)
    nus = _foreach_accumulate(params, states, g2)
    denom = torch._foreach_add(nus, h.eps)
    torch._foreach_sqrt_(denom)
    updates = torch._foreach_div(g_stat, denom)
    if h.momentum:
        ms = [local_shard(s["momentum_buffer"]) for s in states]
        torch._foreach_lerp_(ms, [u.to(m.dtype) for u, m in zip(updates, ms)], 1.0 - h.momentum)
        updates = ms
    p_locals = [local_shard(p) for p in params]
    steps = [s.to(p.dtype) for s, p in zip(torch._foreach_mul(updates, h.lr), p_locals)]
    cautious = h.step_decay is not None and h.step_decay.rule.cautious
    signs = [like_param(p, s) for p, s in zip(params, steps)] if cautious else None
    decayed_update_(h.step_decay, params, states, h.lr,
                    partial(torch._foreach_sub_, p_locals, steps), signs=signs)


def _foreach_accumulate(params, states, g2) -> list[Tensor]:
    """``nu`` of every tensor, the accumulators updated (the maxima of all in one reduction)."""
    nus: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
    matrices = [i for i, p in enumerate(params) if p.dim() >= 2]
    vectors = [i for i, p in enumerate(params) if p.dim() < 2]
    if vectors:
        accs = [local_shard(states[i]["accumulator"]) for i in vectors]
        torch._foreach_add_(accs, [g2[i] for i in vectors])
        for i, acc in zip(vectors, accs):
            nus[i] = acc
    if not matrices:
        return nus
    accs = {i: [local_shard(states[i][k]) for k in _accumulator_keys(params[i])] for i in matrices}
    for i in matrices:
        nus[i] = _cover_min(accs[i], params[i].dim())
    torch._foreach_add_([nus[i] for i in matrices], [g2[i] for i in matrices])
    owners, partials, dims, targets = [], [], [], []
    for i in matrices:
        p, nu = params[i], nus[i]
        for d, acc in enumerate(accs[i]):
            others = tuple(k for k in range(p.dim()) if k != d)
            if nu.numel() or is_dtensor(p):
                owners.append(p)
                dims.append(others)
                partials.append(nu.amax(dim=others) if nu.numel() else torch.zeros_like(acc))
                targets.append(acc)
    maxima = all_reduce_partials(owners, partials, dims, op="max")
    if targets:
        torch._foreach_copy_(targets, maxima)
    return nus


def sm3(
    params: list[Tensor], grads: list[Tensor], states: list[dict[str, Tensor]], h: SM3Hyper
) -> None:
    """One SM3 step over lists of tensors (the math; the class gathers the lists)."""
    if h.foreach:
        for index in batches(params):
            _foreach([params[i] for i in index], [grads[i] for i in index],
                     [states[i] for i in index], h)
        return
    for p, g, state in zip(params, grads, states):
        _one(p, g, state, h)


class SM3(ForeachOption, CheckedOptimizer):
    """SM3-II with momentum; see the module docstring for the formula.

    Args:
        params: parameters or parameter groups.
        lr: learning rate. Default 0.1.
        momentum: on the preconditioned update, 0 <= momentum < 1. Default 0.9.
        eps: under the square root. Default 1e-30.
        weight_decay: decoupled decay coefficient, by default L2 ``p *= 1 - lr*weight_decay``.
            Default 0.
        maximize: ascend instead of descend.
        foreach: ``torch._foreach_*`` path (``None``, the default: as torch chooses, foreach on
            CUDA); the same step to rounding.
        **decay: the decay keys of ``adamhd.decay.native`` (``decay="l2"`` by default; Huber,
            proximal, cautious with the sign of the update, ``decay_scaling``).
    """

    name = "SM3"
    native_decay = True
    stat_keys = ("accumulator",) + tuple(f"accumulator_{d}" for d in range(16))
    later_state = {"momentum_buffer": Entry()}  # made by the first step with momentum != 0
    hyper_type = SM3Hyper
    checks = {"momentum": in_unit, "eps": finite_nonneg}

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 0.1,
        momentum: float = 0.9,
        eps: float = 1e-30,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        **decay: Any,
    ) -> None:
        super().__init__(params, locals())

    def new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        dtype = stat_dtype(p)
        if p.dim() < 2:
            return {"accumulator": zeros_over(p, list(range(p.dim())), dtype)}
        return {key: zeros_over(p, [d], dtype) for d, key in enumerate(_accumulator_keys(p))}

    def init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """The accumulators (first step), and the momentum once ``momentum`` is not 0."""
        state = super().init_state(p, group)
        if group["momentum"] and "momentum_buffer" not in state:
            state["momentum_buffer"] = zero_moment(p)
        return state

    def group_step(self, params, grads, states, hyper) -> None:
        sm3(params, grads, states, hyper)
