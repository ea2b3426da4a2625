"""The few torch internals whose name changed between the torch versions ``adamhd`` supports
(the declared minimum in pyproject.toml up to the tested newest; README, "Torch versions")."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import Optimizer

try:  # torch >= 2.6
    from torch.optim.optimizer import _to_scalar as to_scalar
except ImportError:  # torch 2.4, 2.5

    def to_scalar(x: Any) -> Any:
        """A 1-element Tensor as a 0-dim Tensor; anything else as is (torch's ``_to_scalar``)."""
        if isinstance(x, torch.Tensor) and x.dim() != 0:
            return x.squeeze()
        return x


def graph_capture_health_check(optimizer: Optimizer) -> None:
    """torch's check that ``capturable`` matches an ongoing CUDA graph capture."""
    check = getattr(optimizer, "_accelerator_graph_capture_health_check", None)
    if check is None:  # torch < 2.6: the CUDA-only name
        check = optimizer._cuda_graph_capture_health_check
    check()
