"""torch.distributed support: whole-tensor statistics of sharded (DTensor) parameters.

AdamHD's adaptive threshold needs ``mean|p|`` of the *whole* parameter tensor. Under FSDP2
(``torch.distributed.fsdp.fully_shard``) and tensor parallelism a parameter is a ``DTensor`` and
each rank holds one shard of it, so a mean taken on the local shard is a different threshold on
every rank, and ``DTensor.abs().mean()`` gathers the whole tensor to every rank (one all-gather
of the full parameter per tensor per step).

``global_mean_abs`` does instead: sum ``|p|`` on each local shard, stack the sums of all tensors
that share a device mesh and a sharding pattern, all-reduce that one small vector (one
collective per sharded mesh dimension: one per step for FSDP2, two for 2-D FSDP+TP) and divide
by each tensor's global ``numel``. The result is a plain 0-dim tensor per parameter, the same on
every rank, so the threshold state (``delta_mu``) is a plain tensor like ``step`` and
``torch.distributed.checkpoint`` saves it once and loads it into any number of ranks.

Everything else AdamHD does is elementwise, so it runs on DTensors shard by shard through
DTensor's own dispatch (the single-tensor and foreach paths), exactly as ``torch.optim.AdamW``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from adamhd.decay.threshold import foreach_mean_abs, mean_abs, mu_dtype

__all__ = [
    "any_dtensor",
    "fused_dtensor_reason",
    "global_mean_abs",
    "is_dtensor",
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


def _sharded_mesh_dims(p: Tensor) -> tuple[int, ...]:
    """The mesh dimensions over which ``p`` is split (``Shard``); ``Replicate`` ones are not."""
    dims = []
    for mesh_dim, placement in enumerate(p.placements):  # type: ignore[attr-defined]
        if placement.is_shard():
            dims.append(mesh_dim)
        elif placement.is_partial():
            raise RuntimeError(
                "AdamHD cannot use a Partial DTensor as a parameter: its whole-tensor mean|p| "
                "is undefined until it is reduced; redistribute it to Shard or Replicate"
            )
    return tuple(dims)


def global_mean_abs(params: list[Tensor]) -> list[Tensor]:
    """``mean|p|`` of each whole tensor as a plain 0-dim tensor, equal on every rank.

    DTensor parameters are reduced across ranks: one ``all_reduce`` of a stacked vector of local
    ``sum|p|`` per (mesh, sharded mesh dimension) for all such parameters together. Plain tensors
    (not sharded) are computed locally. The statistics are float64 for float64 weights, else
    float32, on each parameter's local device.
    """
    out: list[Tensor | None] = [None] * len(params)
    buckets: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        if is_dtensor(p):
            dims = _sharded_mesh_dims(p)
            device = p.to_local().device  # type: ignore[attr-defined]
            key = (p.device_mesh, dims, device, mu_dtype(p))  # type: ignore[attr-defined]
            buckets.setdefault(key, []).append(i)
        else:
            out[i] = mean_abs(p.detach())

    for (mesh, mesh_dims, device, dtype), indices in buckets.items():
        locals_ = [params[i].to_local().detach() for i in indices]  # type: ignore[attr-defined]
        # float64 sums, as in mean_abs: float32 loses ~1e-4 over millions of elements
        sums = torch.stack(torch._foreach_norm(locals_, 1, dtype=torch.float64))
        for mesh_dim in mesh_dims:
            torch.distributed.all_reduce(sums, group=mesh.get_group(mesh_dim))
        numels = torch.tensor(
            [float(max(params[i].numel(), 1)) for i in indices], dtype=torch.float64, device=device
        )
        for i, mean in zip(indices, (sums / numels).to(dtype).unbind(0)):
            out[i] = mean
    return out  # type: ignore[return-value]


def whole_mean_abs(params: list[Tensor], foreach: bool = False) -> list[Tensor]:
    """``mean(|p|)`` of each *whole* tensor: sharded DTensor parameters (FSDP2) are summed across
    ranks with one all-reduce for all of them (``global_mean_abs``); plain tensors locally."""
    if not params:
        return []
    if any_dtensor(params):
        return global_mean_abs(params)
    return foreach_mean_abs(params) if foreach else [mean_abs(p) for p in params]
