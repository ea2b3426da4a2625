"""The implementation a group of the factored optimizers (Adafactor, SM3, SMMF) runs."""

from __future__ import annotations

from typing import Any

from torch.optim.optimizer import _default_to_fused_or_foreach


def use_foreach(group: dict[str, Any]) -> bool:
    """``group["foreach"]`` if set; ``None`` chooses as torch's optimizers do: the foreach path
    where torch has foreach kernels for every parameter (CUDA and similar), else the loop."""
    foreach = group.get("foreach")
    if foreach is not None:
        return bool(foreach)
    _, default = _default_to_fused_or_foreach(group["params"], differentiable=False,
                                              use_fused=False)
    return bool(default)
