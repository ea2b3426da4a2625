"""Fused AdamHD kernels: one pass over memory per tensor, the same math as ``adamhd.functional``.

Contract, used by ``AdamHD`` and ``adamhd.functional``:

* ``fused_unsupported_reason(p)``: ``None`` if a fused kernel can update ``p``, else a sentence
  saying why not (shown to a user who asked for ``fused=True``).
* ``fused_is_default(params)``: whether ``fused=None`` should pick the fused path for ``params``
  (only where it is verified and measured fastest).
* ``fused_adamhd(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, delta_mus,
  *, decay, amsgrad, beta1, beta2, lr, weight_decay, eps, maximize, capturable, differentiable,
  grad_scale, found_inf)``: one step, in place.

No fused kernel is built yet: every parameter is reported unsupported.
"""

from __future__ import annotations

from torch import Tensor


def fused_unsupported_reason(p: Tensor) -> str | None:
    return f"no fused AdamHD kernel is available for {p.dtype} parameters on {p.device.type}"


def fused_is_default(params: list[Tensor]) -> bool:
    return False


def fused_adamhd(*args, **kwargs) -> None:
    raise RuntimeError("no fused AdamHD kernel is available in this build")
