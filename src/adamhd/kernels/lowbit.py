"""The fused CPU step of low-bit AdamHD groups (issue 19): ``adamhd::fused_lowbit_step_``.

A group with ``state_dtype="bfloat16"`` or ``"int8"``, or with ``bf16_stochastic_round``
(``adamhd.optim.adamhd.lowbit``), takes this op on the fused path: per block of 256 elements it
decodes the moments, runs the fused kernel's float step (decay: both rules and forms, fixed or
adaptive threshold, cautious) and encodes them back, in one pass over memory
(``adamhd_cpu.cpp``, its low-bit section). Its arguments: ``adamhd.kernels.spec.LOWBIT_ARGS``.

The result equals the reference path run with the fused float32 kernel on the working copies
(decode, ``fused_step_``, encode), bit for bit: the same float step, the same codes, the same
rounding noise. Against the foreach and single-tensor paths it agrees as ``fused_step_`` does
(to float rounding), and a moment code differs from theirs only where that rounding crosses a
code boundary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from adamhd.kernels import spec

if TYPE_CHECKING:
    from adamhd.optim.adamhd.step import AdamStep, AdamTensors

__all__ = ["fused_lowbit_reason", "fused_lowbit_step"]


def fused_lowbit_reason(group: Any, params: list[Tensor]) -> str | None:
    """Why the fused low-bit CPU kernel cannot step ``params`` of ``group``, or ``None``."""
    reason = spec.state_reason(group, "cpu") or spec.lowbit_reason(params)
    if reason is None:
        from adamhd.kernels import cpu

        if cpu.load() is None:
            return cpu.build_error()
    return reason


def fused_lowbit_step(
    tensors: AdamTensors,
    hyper: AdamStep,
    group: Any,
    states: list[dict[str, Any]],
    positions: list[int],
    *,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """One fused step of a low-bit group, in place: ``states`` hold each parameter's moments
    (and int8 scales), ``positions`` each parameter's index in the optimizer (the rounding
    noise's key)."""
    if not tensors.params:
        return
    reason = spec.decay_reason(hyper.decay) or fused_lowbit_reason(group, tensors.params)
    if reason is not None:
        raise RuntimeError(f"fused low-bit AdamHD step impossible: {reason}")
    args = spec.lowbit_op_args(tensors, hyper, grad_scale, found_inf, states, positions, group)
    torch.ops.adamhd.fused_lowbit_step_(*args)
