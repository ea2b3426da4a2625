"""``torch.distributed.checkpoint`` (DCP) of AdamHD's int8 state into another layout.

The scales of an int8 moment have one row per dim-0 shard of the run that saved them
(``adamhd.optim.adamhd.scales``), so a template made on another number of ranks has another
shape and DCP refuses it while planning (``Size mismatch ... exp_avg_scale``).
``ScalesAsSavedPlanner`` gives the template's scale entries the saved shape first (plain
tensors, which DCP reads whole: ``numel / 256`` floats per moment); ``AdamHD.load_state_dict``
(through ``set_state_dict``) then re-encodes the codes, which DCP resharded elementwise, in this
rank's blocks::

    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=path, planner=ScalesAsSavedPlanner())
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])

On the layout that saved the checkpoint nothing is rewritten and the load is bit-exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.distributed.checkpoint import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from adamhd.distributed import local_shard
from adamhd.optim.adamhd.scales import SCALE_KEYS

__all__ = ["ScalesAsSavedPlanner", "scales_as_saved"]


def scales_as_saved(state_dict: dict[str, Any], metadata: Metadata) -> list[str]:
    """Replace, in place, each int8 scale entry (``exp_avg_scale``, ``exp_avg_sq_scale``) of the
    nested ``state_dict`` whose shape differs from the checkpoint's (``metadata``, e.g.
    ``FileSystemReader(path).read_metadata()``) by zeros of the saved shape and dtype, on the
    entry's device; return their DCP keys. Entries the checkpoint lacks are left to DCP."""
    changed = []
    for key, holder, name in list(_scale_entries(state_dict, ())):
        saved = metadata.state_dict_metadata.get(key)
        if isinstance(saved, TensorStorageMetadata) and \
                tuple(saved.size) != tuple(holder[name].shape):
            device = local_shard(holder[name]).device
            holder[name] = torch.zeros(saved.size, dtype=saved.properties.dtype, device=device)
            changed.append(key)
    return changed


def _scale_entries(node: Any, path: tuple) -> Iterator[tuple[str, Any, Any]]:
    """(DCP key, the mapping holding it, its key there) of every scale tensor under ``node``
    (DCP's flattened key: the path of mapping keys joined by dots; a key may itself be dotted,
    as ``get_state_dict``'s ``flatten_optimizer_state_dict=True`` writes them)."""
    if not isinstance(node, Mapping):
        return
    for name, value in node.items():
        here = (*path, name)
        if str(name).rsplit(".", 1)[-1] in SCALE_KEYS and isinstance(value, Tensor):
            yield ".".join(map(str, here)), node, name
        else:
            yield from _scale_entries(value, here)


class ScalesAsSavedPlanner(DefaultLoadPlanner):
    """``DefaultLoadPlanner`` that first applies ``scales_as_saved`` to the state_dict being
    loaded (the caller's nested dicts are rewritten in place)."""

    def set_up_planner(self, state_dict: Any, metadata: Metadata | None = None,
                       is_coordinator: bool = False) -> None:
        if metadata is not None:
            scales_as_saved(state_dict, metadata)
        super().set_up_planner(state_dict, metadata, is_coordinator)
