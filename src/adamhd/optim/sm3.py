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
0) is decoupled L2, ``p *= 1 - lr*wd``. Sharded DTensor (FSDP2) parameters are rejected: the
slice maxima span shards.
"""

from __future__ import annotations

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
    stat_dtype,
)

__all__ = ["SM3", "SM3Hyper", "sm3"]


@dataclass(frozen=True)
class SM3Hyper:
    lr: float
    momentum: float
    eps: float
    weight_decay: float


def _accumulator_keys(p: Tensor) -> list[str]:
    return [f"accumulator_{d}" for d in range(p.dim())] if p.dim() >= 2 else ["accumulator"]


def _broadcast(acc: Tensor, dim: int, ndim: int) -> Tensor:
    return acc.reshape([-1 if d == dim else 1 for d in range(ndim)])


def _one(p: Tensor, g: Tensor, state: dict[str, Tensor], h: SM3Hyper) -> None:
    g = g.to(stat_dtype(p))
    if p.dim() >= 2:
        accs = [state[k] for k in _accumulator_keys(p)]
        nu = _broadcast(accs[0], 0, p.dim())
        for d, acc in enumerate(accs[1:], start=1):
            nu = torch.minimum(nu, _broadcast(acc, d, p.dim()))
        nu = nu + g.square()
        for d, acc in enumerate(accs):
            others = [i for i in range(p.dim()) if i != d]
            acc.copy_(nu.amax(dim=others) if nu.numel() else acc)
    else:
        acc = state["accumulator"]
        acc.add_(g.square())
        nu = acc
    update = g / (nu + h.eps).sqrt()
    if h.momentum:
        m = state["momentum_buffer"]
        m.lerp_(update.to(m.dtype), 1.0 - h.momentum)
        update = m
    if h.weight_decay != 0.0:
        p.mul_(1.0 - h.lr * h.weight_decay)
    p.sub_((update * h.lr).to(p.dtype))


def sm3(
    params: list[Tensor], grads: list[Tensor], states: list[dict[str, Tensor]], h: SM3Hyper
) -> None:
    """One SM3 step over lists of tensors (the math; the class gathers the lists)."""
    for p, g, state in zip(params, grads, states):
        _one(p, g, state, h)


class SM3(CheckedOptimizer):
    """SM3-II with momentum; see the module docstring for the formula.

    Args:
        params: parameters or parameter groups.
        lr: learning rate. Default 0.1.
        momentum: on the preconditioned update, 0 <= momentum < 1. Default 0.9.
        eps: under the square root. Default 1e-30.
        weight_decay: decoupled L2, ``p *= 1 - lr*weight_decay``. Default 0.
        maximize: ascend instead of descend.
    """

    name = "SM3"
    stat_keys = ("accumulator",) + tuple(f"accumulator_{d}" for d in range(16))
    dtensor_reason = "its slice maxima span shards"
    hyper_type = SM3Hyper

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 0.1,
        momentum: float = 0.9,
        eps: float = 1e-30,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, eps=eps, weight_decay=weight_decay,
                        maximize=maximize)
        super().__init__(params, defaults)

    def check_group(self, group: dict[str, Any]) -> None:
        check_lr(group)
        in_unit("momentum", group["momentum"])
        finite_nonneg("eps", group["eps"])
        finite_nonneg("weight_decay", group["weight_decay"])

    def init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        momentum = group["momentum"]
        state = self.state[p]
        if not state:
            kw = dict(dtype=stat_dtype(p), device=p.device)
            if p.dim() >= 2:
                for d, key in enumerate(_accumulator_keys(p)):
                    state[key] = torch.zeros(p.shape[d], **kw)
            else:
                state["accumulator"] = torch.zeros(p.shape, **kw)
        if momentum and "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def group_step(self, params, grads, states, hyper) -> None:
        sm3(params, grads, states, hyper)
