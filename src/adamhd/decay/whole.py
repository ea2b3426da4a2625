"""Whole-tensor sums of parameters that may be sharded (FSDP2 / tensor-parallel ``DTensor``).

``local_sums`` holds one number per parameter, computed on the local shard (or on the whole tensor
for a plain one). ``whole_sums`` adds the shards' numbers of every ``DTensor`` parameter across
the ranks: one ``all_reduce`` of a stacked vector per (mesh, sharded mesh dimension), so one per
step for FSDP2 whatever the number of parameters. Plain tensors are returned as they are. The
statistics of Stable Weight Decay (``adamhd.decay.stable``) and CPR (``adamhd.decay.cpr``) use it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from adamhd.decay.threshold import statistic_dtype
from adamhd.distributed import _sharded_mesh_dims, is_dtensor

__all__ = ["local", "sum_squares", "sums", "whole_sums"]


def local(p: Tensor) -> Tensor:
    """The local shard of a ``DTensor`` (the tensor itself otherwise), detached."""
    return (p.to_local() if is_dtensor(p) else p).detach()  # type: ignore[attr-defined]


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
    """``local_sums`` (one 0-dim tensor per parameter) summed over the shards of each parameter."""
    out = list(local_sums)
    buckets: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        if is_dtensor(p):
            dims = _sharded_mesh_dims(p)
            if dims:
                key = (p.device_mesh, dims, local_sums[i].device)  # type: ignore[attr-defined]
                buckets.setdefault(key, []).append(i)
    for (mesh, mesh_dims, _), indices in buckets.items():
        stacked = torch.stack([local_sums[i].to(torch.float64) for i in indices])
        for mesh_dim in mesh_dims:
            torch.distributed.all_reduce(stacked, group=mesh.get_group(mesh_dim))
        for i, total in zip(indices, stacked.unbind(0)):
            out[i] = total
    return out
