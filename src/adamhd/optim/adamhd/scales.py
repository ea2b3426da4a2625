"""int8 scales of FSDP2 shards in a ``state_dict`` (DCP), loaded into the same or another layout.

In memory, the scales of a DTensor parameter's int8 moment are a plain tensor of the local
shard's blocks (``lowbit.blocks``: blocks of ``BLOCK`` elements of the local shard's flattened
tensor, cut within the shard). DCP saves a plain tensor once (every rank's copy has the same
key), so the other ranks' scales were lost and every rank read one rank's back, silently. In
``state_dict()`` they are therefore a DTensor of global shape (shards, most blocks of a shard),
row ``s`` holding shard ``s``'s scales (zero padded), sharded over the mesh dimension that
shards the parameter's dim 0 (``scale_form``): DCP saves every rank's row and loads it back into
the same layout, where ``load_state_dict`` takes this rank's row (bit-exact).

Another layout (a 2-rank checkpoint in 1 process, a 1-process one on 2 ranks, 2 -> 4 ranks):
the codes are elementwise, so DCP reshards them like the parameter, but the blocks of their
scales are not this layout's. The saved scales' shape tells the saved layout: ``(S, width)``
rows are ``S`` dim-0 shards (FSDP2 splits dim 0 as ``torch.chunk``), a 1-D tensor is one
process. ``load_state_dict`` then decodes each local element with the scale of the block it
was in when saved and encodes the values again in this rank's blocks (``local_scales``): one
re-encode, each moment within half a code step of its saved value. DCP needs the load
template's scales in the saved shape: ``adamhd.checkpoint.ScalesAsSavedPlanner`` (or
``scales_as_saved``) gives them that shape, as plain tensors read whole (``numel / 256``
floats).
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import chain
from typing import Any

import torch
from torch import Tensor

from adamhd.distributed import is_dtensor, like_param, local_shard
from adamhd.optim.adamhd.lowbit import (
    BLOCK,
    MOMENTS,
    blocks,
    decode_scaled,
    encode_int8,
    global_offset,
)

__all__ = ["SCALE_KEYS", "local_scales", "scale_form", "shard_blocks", "with_scale_forms"]

SCALE_KEYS = tuple(f"{key}_scale" for key in MOMENTS)


def _shard_mesh_dim(p: Tensor) -> int | None:
    """The mesh dimension that shards ``p``'s dim 0 (``None``: ``p`` is replicated); raises for
    layouts whose int8 blocks a state_dict cannot describe (a shard of another dim, nested)."""
    from torch.distributed.tensor import Replicate, Shard

    sharded = [i for i, pl in enumerate(p.placements) if isinstance(pl, Shard)]
    bad = [pl for pl in p.placements if not isinstance(pl, (Shard, Replicate))]
    if bad or len(sharded) > 1 or any(p.placements[i].dim != 0 for i in sharded):
        raise NotImplementedError(
            f"state_dtype='int8' checkpoints support DTensor parameters sharded on dim 0 over "
            f"one mesh dimension (FSDP2, HSDP); got placements {tuple(p.placements)}; use "
            "state_dtype='bfloat16' or 'float32' for this parameter")
    return sharded[0] if sharded else None


def _layout(p: Tensor) -> tuple[int, int]:
    """(dim-0 shards of ``p`` now, this rank's shard): ``(1, 0)`` for a plain tensor."""
    dim = _shard_mesh_dim(p) if is_dtensor(p) else None
    if dim is None:
        return 1, 0
    return p.device_mesh.size(dim), p.device_mesh.get_coordinate()[dim]  # type: ignore


def shard_blocks(p: Tensor, shards: int) -> list[int]:
    """int8 blocks of each of ``shards`` dim-0 shards of ``p`` (``torch.chunk``'s split)."""
    rows = p.shape[0] if p.dim() else 1
    row = p.numel() // rows if rows else 0
    step = -(-rows // shards)
    sizes = [max(0, min(step, rows - s * step)) for s in range(shards)]
    return [-(-size * row // BLOCK) for size in sizes]


def scale_form(p: Tensor, scale: Tensor) -> Tensor:
    """The ``state_dict`` form of the local ``scale`` of a DTensor ``p`` (see above)."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    dim = _shard_mesh_dim(p)
    shards = _layout(p)[0]
    width = max(shard_blocks(p, shards))
    row = torch.zeros(1, width, dtype=scale.dtype, device=scale.device)
    row[0, : scale.numel()] = scale
    placements = [Shard(0) if i == dim else Replicate() for i in range(len(p.placements))]
    return DTensor.from_local(row, p.device_mesh, placements, shape=(shards, width),
                              stride=(width, 1))


def with_scale_forms(params: list[Tensor], state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` (torch's ``Optimizer.state_dict()``, ids in ``params``' order) with the
    int8 scales of DTensor parameters in their form; the optimizer's state is not touched."""
    state = dict(state_dict["state"])
    for index, p in enumerate(params):
        saved = state.get(index)
        if not saved or not is_dtensor(p) or SCALE_KEYS[0] not in saved:
            continue
        saved = dict(saved)
        for key in SCALE_KEYS:
            if key in saved:
                saved[key] = scale_form(p, saved[key])
        state[index] = saved
    return {**state_dict, "state": state}


# ---- load --------------------------------------------------------------------------------------


def local_scales(optimizer: torch.optim.Optimizer, state_dict: Mapping[str, Any]) -> dict:
    """``state_dict`` with every int8 moment in this rank's blocks: a scale form of this layout
    gives this rank's row; scales of another layout (see above) re-encode the codes. Nothing of
    ``state_dict`` or the optimizer changes; what cannot be read raises ``StateError`` (layouts
    a state_dict cannot describe: ``NotImplementedError``) before anything is loaded."""
    saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
    params = chain.from_iterable(g["params"] for g in optimizer.param_groups)
    state = dict(state_dict["state"])
    for saved_id, p in zip(saved_ids, params):
        saved = state.get(saved_id)
        if isinstance(saved, Mapping) and any(isinstance(saved.get(k), Tensor)
                                              for k in SCALE_KEYS):
            saved = dict(saved)
            for key in MOMENTS:
                if isinstance(saved.get(f"{key}_scale"), Tensor):
                    _load_moment(optimizer, p, saved, key)
            state[saved_id] = saved
    return {**state_dict, "state": state}


def _load_moment(optimizer: Any, p: Tensor, saved: dict[str, Any], key: str) -> None:
    """``saved[key]`` and its scale (a copy of the loaded entry) in this rank's blocks."""
    form = saved[f"{key}_scale"]
    shards, index = _layout(p)
    if is_dtensor(form) and is_dtensor(p) and \
            tuple(form.shape) == (shards, max(shard_blocks(p, shards))):
        # this layout's form: this rank's row, no collective (bit-exact resume)
        saved[f"{key}_scale"] = form.to_local()[0, : blocks(p)].clone()
        return
    if not is_dtensor(p) and form.dim() == 1:
        return  # a plain tensor's scales (its shape is checked with the rest of the state)
    rows = _saved_rows(optimizer, p, form, f"{key}_scale")
    codes = _local_codes(optimizer, p, saved.get(key), key)
    if rows.shape[0] == shards:  # the same blocks, in another form
        saved[f"{key}_scale"] = rows[index, : blocks(p)].clone()
        return
    values = _decode_saved(codes, rows, p, key == "exp_avg")
    code, scale = encode_int8(values, key == "exp_avg")
    saved[key] = like_param(p, code)
    saved[f"{key}_scale"] = scale


def _saved_rows(optimizer: Any, p: Tensor, form: Tensor, name: str) -> Tensor:
    """The saved scales as a plain (shards, width) tensor, checked against ``p``'s shape."""
    rows = form.full_tensor() if is_dtensor(form) else form  # type: ignore[attr-defined]
    rows = rows[None] if rows.dim() == 1 else rows
    if rows.dim() != 2 or rows.shape[0] < 1 or rows.shape[1] != max(
            shard_blocks(p, rows.shape[0])):
        raise _error(optimizer, p, f"{name!r} has shape {tuple(form.shape)}: int8 scales of "
                     "neither one process (blocks,) nor dim-0 shards (shards, most blocks of a "
                     "shard) of this parameter")
    return rows.float()


def _local_codes(optimizer: Any, p: Tensor, codes: Any, key: str) -> Tensor:
    """This rank's part of the saved codes, which must be laid out like ``p`` (as DCP loads
    them into the template of ``get_state_dict``)."""
    same = isinstance(codes, Tensor) and codes.dtype == torch.uint8 and \
        tuple(codes.shape) == tuple(p.shape) and is_dtensor(codes) == is_dtensor(p) and \
        (not is_dtensor(p) or tuple(codes.placements) == tuple(p.placements))  # type: ignore
    if not same:
        got = f"a {type(codes).__name__}" if not isinstance(codes, Tensor) else \
            f"{'a DTensor' if is_dtensor(codes) else 'a plain tensor'} of {codes.dtype}, " \
            f"shape {tuple(codes.shape)}"
        raise _error(optimizer, p, f"{key!r} must be uint8 codes laid out like the parameter "
                     f"(a DTensor for a sharded one) to load int8 scales of another layout; got "
                     f"{got}. Load the checkpoint with torch.distributed.checkpoint and "
                     "adamhd.checkpoint.ScalesAsSavedPlanner (docs/state-precision.md)")
    return local_shard(codes)


def _decode_saved(codes: Tensor, rows: Tensor, p: Tensor, signed: bool) -> Tensor:
    """float32 values of this rank's ``codes``, each element decoded with the scale of the
    block it was in under the saved layout (``rows``: one row of scales per saved shard)."""
    flat = codes.reshape(-1).to(torch.int64)
    index = global_offset(p) + torch.arange(flat.numel(), device=flat.device)
    dim0 = max(p.shape[0] if p.dim() else 1, 1)
    row = max(p.numel() // dim0, 1)
    shard_rows = -(-dim0 // rows.shape[0])
    shard = index // row // shard_rows
    block = (index - shard * shard_rows * row) // BLOCK
    scale = rows.to(flat.device)[shard, block]
    return decode_scaled(flat, scale, signed).view(codes.shape)


def _error(optimizer: Any, p: Tensor, problem: str) -> Exception:
    from adamhd.state import StateError

    return StateError(f"{type(optimizer).__name__}.load_state_dict: the int8 moments of a "
                      f"parameter of shape {tuple(p.shape)}: {problem}")
