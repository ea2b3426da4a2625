"""``param_groups``: the usual split of a model's parameters into decayed and exempt groups."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from torch import nn

from adamhd.decay.rules import is_number

__all__ = ["param_groups", "NORM_TYPES", "EMBEDDING_TYPES"]

#: Modules whose own parameters (scale and shift) are never decayed.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm*
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)

#: Modules whose weight is an embedding table (decayed unless ``exempt_embeddings``).
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    exempt_embeddings: bool = False,
    exempt_types: Iterable[type[nn.Module]] = (),
    **group_options: Any,
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into a decayed and an exempt group.

    Decided by the module that owns each parameter, not by its name:

    * exempt: the ``bias`` of any module; every parameter of a normalisation module
      (``NORM_TYPES``) or of a module in ``exempt_types``; embedding tables if
      ``exempt_embeddings`` (by default they are decayed, as in GPT-2 and nanoGPT);
    * decayed: every other parameter with two or more dimensions (weight matrices, conv kernels);
    * exempt: any other parameter with fewer than two dimensions (scales, gates, scalars).

    A parameter shared by several modules (weight tying) is listed once, under the rule of the
    first module that owns it in ``model.modules()`` order. Frozen parameters
    (``requires_grad=False``) are left out. ``group_options`` (``lr``, ``delta``...) go into both
    groups. Empty groups are dropped.

    >>> optimizer = AdamHD(param_groups(model, weight_decay=0.1), lr=3e-4)
    """
    if not is_number(weight_decay) or not 0.0 <= weight_decay < math.inf:
        raise ValueError(f"param_groups: weight_decay must be a finite number >= 0, "
                         f"got {weight_decay!r}")
    exempt_types = tuple(exempt_types)
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            if isinstance(module, NORM_TYPES + exempt_types) or name == "bias":
                exempt = True
            elif isinstance(module, EMBEDDING_TYPES):
                exempt = exempt_embeddings
            else:
                exempt = p.dim() < 2
            (no_decay if exempt else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, **group_options},
        {"params": no_decay, "weight_decay": 0.0, **group_options},
    ]
    return [g for g in groups if g["params"]]
