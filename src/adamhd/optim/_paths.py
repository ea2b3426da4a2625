"""The implementation a group of the factored optimizers (Adafactor, SM3, SMMF) runs."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.optim.optimizer import _default_to_fused_or_foreach


class ForeachOption:
    """Mixin (before ``CheckedOptimizer``) for an optimizer with a ``foreach`` group option: the
    hyper record gets the chosen path (``use_foreach``), and a pickled optimizer from before
    the option gets ``foreach=None``."""

    param_groups: list[dict[str, Any]]

    def group_hyper(self, group: dict[str, Any], **step_values: Any) -> Any:
        return super().group_hyper(  # type: ignore[misc]
            {**group, "foreach": use_foreach(group)}, **step_values)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        for group in self.param_groups:
            group.setdefault("foreach", None)


def use_foreach(group: dict[str, Any]) -> bool:
    """``group["foreach"]`` if set; ``None`` chooses as torch's optimizers do: the foreach path
    where torch has foreach kernels for every parameter (CUDA and similar), else the loop."""
    foreach = group.get("foreach")
    if foreach is not None:
        return bool(foreach)
    _, default = _default_to_fused_or_foreach(group["params"], differentiable=False,
                                              use_fused=False)
    return bool(default)


#: elements per foreach batch: the temporaries of one batch stay in a CPU core's cache (a
#: whole-model batch made the foreach paths 1.3-1.5x slower than the loop on the CPU, measured
#: with ``adamhd bench step --survey``); a larger tensor is a batch of its own
BATCH_ELEMENTS = 2**16


def batches(tensors: list[Tensor], limit: int | None = None) -> list[list[int]]:
    """Indices of ``tensors`` in consecutive runs of at most ``limit`` (``BATCH_ELEMENTS``)
    elements in all; a larger tensor alone."""
    limit = BATCH_ELEMENTS if limit is None else limit
    out: list[list[int]] = []
    total = 0
    for i, t in enumerate(tensors):
        if not out or (total + t.numel() > limit and out[-1]):
            out.append([])
            total = 0
        out[-1].append(i)
        total += t.numel()
    return out
