"""Whole-tensor sums of squares, also of sharded (DTensor) tensors, with one all-reduce.

Under FSDP2 each rank holds a shard of a parameter (and of its optimizer state). A per-tensor
statistic such as NSGDA's ``||m||`` must be the whole tensor's, the same on every rank: each rank
sums its shard and ``adamhd.distributed.all_reduce_partials`` (the package's one cross-shard
reduction) adds the sums of all tensors that share a mesh and sharding in one collective.
"""

from __future__ import annotations

import torch
from torch import Tensor

from adamhd.distributed import all_reduce_partials, local_shard


def sq_sums(tensors: list[Tensor], dtype: torch.dtype) -> list[Tensor]:
    """``sum(t**2)`` of each whole tensor as a plain 0-dim ``dtype`` tensor, equal on all ranks."""
    if not tensors:
        return []
    locals_ = [local_shard(t).detach() for t in tensors]
    squares = [n.square() for n in torch._foreach_norm(locals_, 2, dtype=dtype)]
    return all_reduce_partials(tensors, squares)
