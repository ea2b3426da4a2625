"""Whole-tensor sums of squares, also of sharded (DTensor) tensors, with one all-reduce.

Under FSDP2 each rank holds a shard of a parameter (and of its optimizer state). A per-tensor
statistic such as NSGDA's ``||m||`` must be the whole tensor's, the same on every rank: each rank
sums its shard, the sums of all tensors that share a mesh and sharding are stacked into one
vector and all-reduced once (one collective per sharded mesh dimension: one per step for FSDP2).
"""

from __future__ import annotations

import torch
from torch import Tensor

from adamhd.distributed import is_dtensor


def _sharded_dims(t: Tensor) -> tuple[int, ...]:
    dims = []
    for mesh_dim, placement in enumerate(t.placements):  # type: ignore[attr-defined]
        if placement.is_partial():
            raise RuntimeError("a Partial DTensor has no whole-tensor norm until it is reduced")
        if placement.is_shard():
            dims.append(mesh_dim)
    return tuple(dims)


def sq_sums(tensors: list[Tensor], dtype: torch.dtype) -> list[Tensor]:
    """``sum(t**2)`` of each whole tensor as a plain 0-dim ``dtype`` tensor, equal on all ranks."""
    out: list[Tensor | None] = [None] * len(tensors)
    buckets: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        if is_dtensor(t):
            key = (t.device_mesh, _sharded_dims(t), t.to_local().device)  # type: ignore[attr-defined]
            buckets.setdefault(key, []).append(i)
    plain = [i for i in range(len(tensors)) if not is_dtensor(tensors[i])]
    if plain:
        norms = torch._foreach_norm([tensors[i].detach() for i in plain], 2, dtype=dtype)
        for i, n in zip(plain, norms):
            out[i] = n.square()
    for (mesh, dims, _), indices in buckets.items():
        locals_ = [tensors[i].to_local().detach() for i in indices]  # type: ignore[attr-defined]
        sums = torch.stack(torch._foreach_norm(locals_, 2, dtype=dtype)).square()
        for mesh_dim in dims:
            torch.distributed.all_reduce(sums, group=mesh.get_group(mesh_dim))
        for i, s in zip(indices, sums.unbind(0)):
            out[i] = s
    return out  # type: ignore[return-value]
