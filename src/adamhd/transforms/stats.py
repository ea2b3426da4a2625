"""Per-unit statistics of gradients and weights, of the *whole* tensor even when it is sharded.

A unit is a row (all dims but 0) of a tensor with ``dim > 1``, else the whole tensor; a
statistic is a ``mean``, an L2 ``norm`` or an ``rms`` over each unit, in float32 (float64 for
float64 tensors), shaped (``keepdim``) to broadcast against the tensor.

DTensors (FSDP2 ``fully_shard``, tensor parallelism): each rank sums its local shard; a mesh
dimension whose ``Shard(d)`` splits a reduced dim ``d`` needs those partial sums added across
ranks. All such partial sums of one call travel in one flat buffer through the package's one
cross-shard reduction (``adamhd.distributed.all_reduce_partials``): one ``all_reduce`` per
(mesh, sharded mesh dimension), so one per call under FSDP2. Rows of a dim-0-sharded tensor are
whole on their rank, so row statistics of FSDP2 parameters need no communication at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from adamhd.decay.threshold import statistic_dtype
from adamhd.distributed import all_reduce_partials, local_shard

Kind = Literal["mean", "norm", "rms"]


@dataclass(frozen=True)
class Request:
    """``kind`` of ``tensor`` per row (``rows=True`` and ``dim > 1``) or of the whole tensor."""

    tensor: Tensor
    kind: Kind
    rows: bool


def unit_dims(t: Tensor, rows: bool) -> tuple[int, ...]:
    """The dims a unit statistic reduces: all but 0 for rows of a ``dim > 1`` tensor, else all."""
    start = 1 if rows and t.dim() > 1 else 0
    return tuple(range(start, t.dim()))


stat_dtype = statistic_dtype  # the one policy (adamhd.decay.threshold): float64 or float32


local = local_shard  # the local shard of a DTensor (a view), else the tensor itself


def _local_sum(x: Tensor, dims: tuple[int, ...], square: bool) -> Tensor:
    """Sum (or sum of squares) over ``dims``, keepdim, float32 (float64 for float64)."""
    dtype = stat_dtype(x)
    if not square:
        return x.sum(dim=dims or None, keepdim=True, dtype=dtype)
    if x.dim() >= 2 and len(dims) == x.dim():
        # whole tensor: row norms first, then their squares summed. torch's CPU norm of a whole
        # float32 tensor accumulates sequentially (6e-4 relative error on 16M elements measured);
        # two levels are accurate to ~1e-7 at the same speed.
        rows = torch.linalg.vector_norm(x, 2, dim=dims[1:], dtype=dtype)
        return rows.square().sum().reshape([1] * x.dim())
    return torch.linalg.vector_norm(x, 2, dim=dims or None, keepdim=True, dtype=dtype).square()


def statistics(requests: list[Request]) -> list[Tensor]:
    """Each request's statistic, equal on every rank, shaped to broadcast against its local
    shard. Sharded partial sums are added by ``all_reduce_partials`` (one all-reduce per mesh,
    mesh dimension, device and dtype)."""
    dims = [unit_dims(req.tensor, req.rows) for req in requests]
    sums = [
        _local_sum(local(req.tensor).detach(), d, req.kind != "mean")
        for req, d in zip(requests, dims)
    ]
    sums = all_reduce_partials([req.tensor for req in requests], sums, dims)
    return [_finish(req, s) for req, s in zip(requests, sums)]


def _finish(req: Request, total: Tensor) -> Tensor:
    """sum -> mean, sum of squares -> norm or rms; ``count`` is the whole (global) unit's size."""
    count = max(math.prod(req.tensor.shape[d] for d in unit_dims(req.tensor, req.rows)), 1)
    if req.kind == "mean":
        return total / count
    if req.kind == "rms":
        return (total / count).sqrt_()
    return total.sqrt_()
