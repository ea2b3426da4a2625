"""torch.distributed support: whole-tensor statistics of sharded (DTensor) parameters.

AdamHD's adaptive threshold needs ``mean|p|`` of the *whole* parameter tensor. Under FSDP2
(``torch.distributed.fsdp.fully_shard``) and tensor parallelism a parameter is a ``DTensor`` and
each rank holds one shard of it, so a mean taken on the local shard is a different threshold on
every rank, and ``DTensor.abs().mean()`` gathers the whole tensor to every rank (one all-gather
of the full parameter per tensor per step).

``global_mean_abs`` does instead: sum ``|p|`` on each local shard, stack the sums of all tensors
that share a device mesh and a sharding pattern, all-reduce that one small vector (one
collective per sharded mesh dimension: one per step for FSDP2, two for 2-D FSDP+TP) and divide
by each tensor's global ``numel``. That reduction, ``all_reduce_partials``, is the package's
only cross-shard one: the optimizers' norms (``optim/_reduce.py``), the gradient transforms'
statistics (``transforms/stats.py``), the decay statistics (``decay/whole.py``) and the
factored optimizers' row/column statistics (Adafactor, SM3, SMMF) all call it. The result is a
plain 0-dim tensor per parameter, the same on every rank, so the threshold state (``delta_mu``)
is a plain tensor like ``step`` and ``torch.distributed.checkpoint`` saves it once and loads it
into any number of ranks.

Everything else AdamHD does is elementwise, so it runs on DTensors shard by shard through
DTensor's own dispatch (the single-tensor and foreach paths), exactly as ``torch.optim.AdamW``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from adamhd.decay.threshold import foreach_mean_abs, mean_abs, mu_dtype

__all__ = [
    "all_reduce_partials",
    "any_dtensor",
    "fused_dtensor_reason",
    "global_mean_abs",
    "is_dtensor",
    "local_shard",
    "shard_mesh_dims",
    "whole_mean_abs",
]


def _dtensor_type() -> type | None:
    if not torch.distributed.is_available():
        return None
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - very old torch
        return None
    return DTensor


_DTENSOR = _dtensor_type()


def is_dtensor(t: object) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (a sharded or replicated tensor)."""
    return _DTENSOR is not None and isinstance(t, _DTENSOR)


def any_dtensor(tensors: Iterable[object]) -> bool:
    return _DTENSOR is not None and any(isinstance(t, _DTENSOR) for t in tensors)


def fused_dtensor_reason(p: Tensor) -> str | None:
    """Why a fused kernel cannot update ``p``, if ``p`` is a DTensor (else ``None``)."""
    if is_dtensor(p):
        return (
            "fused AdamHD kernels do not support DTensor (FSDP2 / tensor-parallel) parameters; "
            "use foreach=True (the default) or foreach=False"
        )
    return None


def local_shard(t: Tensor) -> Tensor:
    """The local shard of a DTensor (a view: writing it writes the DTensor), else ``t``."""
    return t.to_local() if is_dtensor(t) else t  # type: ignore[attr-defined]


def shard_mesh_dims(t: Tensor, dims: Iterable[int] | None = None) -> tuple[int, ...]:
    """The mesh dimensions whose ``Shard(d)`` splits one of ``dims`` of the DTensor ``t`` (every
    ``Shard`` when ``dims`` is ``None``): a statistic over ``dims`` taken on the local shard is a
    partial one along exactly those mesh dimensions. ``Replicate`` ones are whole."""
    reduced = None if dims is None else {d % max(t.dim(), 1) for d in dims}
    out = []
    for mesh_dim, placement in enumerate(t.placements):  # type: ignore[attr-defined]
        if placement.is_partial():
            raise RuntimeError(
                "adamhd cannot take whole-tensor statistics of a Partial DTensor (they are "
                "undefined until it is reduced); redistribute it to Shard or Replicate"
            )
        if placement.is_shard() and (reduced is None or placement.dim % max(t.dim(), 1) in reduced):
            out.append(mesh_dim)
    return tuple(out)


def all_reduce_partials(
    owners: Sequence[Tensor],
    partials: list[Tensor],
    dims: Sequence[Iterable[int] | None] | None = None,
    op: str = "sum",
) -> list[Tensor]:
    """THE cross-shard reduction of the package: every whole-tensor or per-slice statistic of a
    sharded tensor goes through here.

    ``partials[i]`` is a plain tensor computed on the local shard of ``owners[i]`` by reducing
    ``dims[i]`` of it (all dims when ``dims`` or ``dims[i]`` is ``None``) with ``op`` (``"sum"``
    or ``"max"``). For each DTensor owner split along one of those dims, the partials of all such
    owners that share a mesh, the mesh dimensions, a device and a dtype are concatenated into one
    flat buffer and all-reduced once per mesh dimension (one collective per call under FSDP2).
    The result is the whole tensor's statistic, equal on every rank; other entries are returned
    as they are.
    """
    out = list(partials)
    buckets: dict[tuple, list[int]] = {}
    for i, t in enumerate(owners):
        if not is_dtensor(t):
            continue
        mesh_dims = shard_mesh_dims(t, None if dims is None else dims[i])
        if mesh_dims:
            part = partials[i]
            key = (t.device_mesh, mesh_dims, part.device, part.dtype)  # type: ignore[attr-defined]
            buckets.setdefault(key, []).append(i)
    reduce_op = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX}[op]
    for (mesh, mesh_dims, _, _), indices in buckets.items():
        flat = torch.cat([partials[i].reshape(-1) for i in indices])
        for mesh_dim in mesh_dims:
            torch.distributed.all_reduce(flat, op=reduce_op, group=mesh.get_group(mesh_dim))
        for i, part in zip(indices, flat.split([partials[i].numel() for i in indices])):
            out[i] = part.view_as(partials[i])
    return out


def global_mean_abs(params: list[Tensor]) -> list[Tensor]:
    """``mean|p|`` of each whole tensor as a plain 0-dim tensor, equal on every rank.

    DTensor parameters: the local ``sum|p|`` (float64) of each, completed by one
    ``all_reduce_partials`` for all of them. Plain tensors (not sharded) are computed locally.
    The statistics are float64 for float64 weights, else float32, on each parameter's local
    device.
    """
    sharded = [i for i, p in enumerate(params) if is_dtensor(p)]
    for i in sharded:
        shard_mesh_dims(params[i])  # a Partial DTensor is refused before anything is read
    out = [None if is_dtensor(p) else mean_abs(p.detach()) for p in params]
    if not sharded:
        return out  # type: ignore[return-value]
    owners = [params[i] for i in sharded]
    # float64 sums, as in mean_abs: float32 loses ~1e-4 over millions of elements
    locals_ = [local_shard(p).detach() for p in owners]
    local_sums = list(torch._foreach_norm(locals_, 1, dtype=torch.float64))
    for i, p, total in zip(sharded, owners, all_reduce_partials(owners, local_sums)):
        out[i] = (total / float(max(p.numel(), 1))).to(mu_dtype(p))
    return out  # type: ignore[return-value]


def whole_mean_abs(params: list[Tensor], foreach: bool = False) -> list[Tensor]:
    """``mean(|p|)`` of each *whole* tensor: sharded DTensor parameters (FSDP2) are summed across
    ranks with one all-reduce for all of them (``global_mean_abs``); plain tensors locally."""
    if not params:
        return []
    if any_dtensor(params):
        return global_mean_abs(params)
    return foreach_mean_abs(params) if foreach else [mean_abs(p) for p in params]


def zeros_over(p: Tensor, kept_dims: Sequence[int], dtype: torch.dtype) -> Tensor:
    """Zeros shaped like the dims ``kept_dims`` of ``p`` (in that order), for a statistic that
    reduces ``p``'s other dims (a row or column factor). For a DTensor ``p`` the result is a
    DTensor on ``p``'s mesh, split like ``p`` along the kept dims and replicated along the
    reduced ones, so its local shard lines up with ``p``'s local shard; else a plain tensor."""
    shape = [p.shape[d] for d in kept_dims]
    if not is_dtensor(p):
        return torch.zeros(shape, dtype=dtype, device=p.device)
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor import zeros as dtensor_zeros

    shard_mesh_dims(p)  # refuses a Partial DTensor
    kept = [d % p.dim() for d in kept_dims]
    placements = [
        Shard(kept.index(pl.dim % p.dim())) if pl.is_shard() and pl.dim % p.dim() in kept
        else Replicate()
        for pl in p.placements  # type: ignore[attr-defined]
    ]
    return dtensor_zeros(shape, dtype=dtype, device_mesh=p.device_mesh,  # type: ignore[attr-defined]
                         placements=placements)


def like_param(p: Tensor, local: Tensor) -> Tensor:
    """``local`` (values of ``p``'s local shard, same shape) as a tensor of ``p``'s kind: a
    DTensor with ``p``'s mesh and placements for a DTensor ``p`` (no copy, no communication),
    else ``local`` itself. For elementwise rules applied to the DTensor ``p`` (the decay's
    cautious mask takes the update's sign this way)."""
    if not is_dtensor(p):
        return local
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local, p.device_mesh, p.placements,  # type: ignore[attr-defined]
                              run_check=False, shape=p.shape, stride=p.stride())
