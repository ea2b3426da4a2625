"""Whole-tensor sums of parameters that may be sharded (FSDP2 / tensor-parallel ``DTensor``).

``local_sums`` holds one number per parameter, computed on the local shard (or on the whole tensor
for a plain one). ``whole_sums`` adds the shards' numbers of every ``DTensor`` parameter across
the ranks through ``adamhd.distributed.all_reduce_partials``: one ``all_reduce`` of a stacked
vector per (mesh, sharded mesh dimension), so one per step for FSDP2 whatever the number of
parameters. Plain tensors are returned as they are. The
statistics of Stable Weight Decay (``adamhd.decay.stable``) and CPR (``adamhd.decay.cpr``) use it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from adamhd.decay.threshold import statistic_dtype
from adamhd.distributed import all_reduce_partials, local_shard

__all__ = ["local", "sum_squares", "sums", "whole_sums"]


def local(p: Tensor) -> Tensor:
    """The local shard of a ``DTensor`` (the tensor itself otherwise), detached."""
    return local_shard(p).detach()


def sum_squares(tensors: list[Tensor]) -> list[Tensor]:
    """``sum(x**2)`` of each (local) tensor as a float64 0-dim tensor, accumulated in float32
    (float64 for float64 tensors: torch's blocked reduction, ~1e-7 relative) without a
    tensor-sized copy."""
    return [n.double() ** 2 for n in _norms([local(t) for t in tensors], 2)]


def sums(tensors: list[Tensor]) -> list[Tensor]:
    """``sum(x)`` of each (local) tensor, accumulated as ``sum_squares`` (a plain sum: several
    times faster on CPU than a 1-norm)."""
    return [local(t).sum(dtype=statistic_dtype(t)).double() for t in tensors]


def _norms(xs: list[Tensor], order: int) -> list[Tensor]:
    """``foreach`` norms in float32 (float64 for float64 tensors), one call per such dtype."""
    out: list[Tensor | None] = [None] * len(xs)
    for dtype in {statistic_dtype(x) for x in xs}:
        idx = [i for i, x in enumerate(xs) if statistic_dtype(x) == dtype]
        for i, n in zip(idx, torch._foreach_norm([xs[i] for i in idx], order, dtype=dtype)):
            out[i] = n
    return out  # type: ignore[return-value]


def whole_sums(params: list[Tensor], local_sums: list[Tensor]) -> list[Tensor]:
    """``local_sums`` (one float64 0-dim tensor per parameter) summed over the shards of each
    parameter by the package's one cross-shard reduction (``all_reduce_partials``)."""
    return all_reduce_partials(params, list(local_sums))
