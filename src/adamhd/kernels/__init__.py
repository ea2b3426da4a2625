"""Fused AdamHD kernels: one pass over memory per tensor, the same math as ``adamhd.functional``.

Contract, used by ``AdamHD`` and ``adamhd.functional``:

* ``fused_unsupported_reason(p)``: ``None`` if a fused kernel can update ``p``, else a sentence
  saying why not (shown to a user who asked for ``fused=True``).
* ``fused_is_default(params)``: whether ``fused=None`` should pick the fused path for ``params``
  (only where it is verified and measured fastest).
* ``fused_rule_reason(decay)``: ``None`` if the kernels implement the decay rule record
  ``decay`` (``adamhd.decay.DecayRule``), else why not.
* ``fused_adamhd(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, delta_mus,
  hyper, *, grad_scale, found_inf)``: one step, in place; ``hyper`` is an
  ``adamhd.hyper.AdamStep`` (its ``weight_decay`` is the coefficient: ``tau = lr*weight_decay``).

Kernels:

* CPU: a C++ kernel (``adamhd_cpu.cpp``, ``at::vec`` + ``at::parallel_reduce``), compiled on first
  use and cached by torch (see ``adamhd.kernels.cpu``); it runs at 88-95% of the measured copy
  bandwidth (``docs/speed.md``). If it cannot be built (no compiler), ``fused=None`` uses torch's
  default path for the device and ``fused=True`` raises with the reason.
* CUDA: a Triton kernel (``adamhd.kernels.triton_adamhd``), one launch per tensor,
  ``capturable``; its math is tested under ``TRITON_INTERPRET=1``, it has not been timed on a GPU.

Adaptive threshold without an extra pass: the kernels return ``sum|p_new|`` per tensor, accumulated
while they write ``p``. It is kept, per parameter, in a weak side table together with
``p._version`` (after the step) and ``p.data_ptr()``; the next step uses it as ``mean|p_t|`` if
both still match, and recomputes ``mean|p|`` otherwise (weights loaded, pruned in place, ...).
Writes through ``p.data`` do not bump ``p._version``: after such writes call
``forget_abs_means()``. The table is not part of ``state_dict`` (a version number means nothing in
another process), so a resumed run recomputes ``mean|p|`` once.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

if TYPE_CHECKING:
    from adamhd.hyper import AdamStep

__all__ = [
    "forget_abs_means",
    "fused_adamhd",
    "fused_is_default",
    "fused_rule_reason",
    "fused_unsupported_reason",
]


CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# param -> (p._version after the step, p.data_ptr(), mean|p| as a Python float or 0-dim tensor)
_abs_means: WeakIdKeyDictionary = WeakIdKeyDictionary()


def forget_abs_means(params: list[Tensor] | None = None) -> None:
    """Drop the cached ``mean|p|`` (all, or of ``params``): the next step recomputes it."""
    if params is None:
        _abs_means.clear()
        return
    for p in params:
        _abs_means.pop(p, None)


def _cpu_module():
    from adamhd.kernels import cpu

    return cpu.load()


def _triton_reason() -> str | None:
    from adamhd.kernels import triton_adamhd

    return triton_adamhd.unavailable_reason()


def fused_unsupported_reason(p: Tensor) -> str | None:
    if p.is_sparse or torch.is_complex(p):
        return "fused AdamHD kernels support dense real parameters only"
    if p.device.type == "cpu":
        if p.dtype not in CPU_DTYPES:
            return f"the fused CPU kernel does not support {p.dtype} parameters"
        if _cpu_module() is None:
            from adamhd.kernels import cpu

            return cpu.build_error()
        return None
    if p.device.type == "cuda":
        if p.dtype not in CUDA_DTYPES:
            return f"the fused CUDA (Triton) kernel does not support {p.dtype} parameters"
        return _triton_reason()
    return f"no fused AdamHD kernel is available for parameters on {p.device.type}"


def fused_rule_reason(decay: Any) -> str | None:
    """Why the fused kernels cannot apply the decay rule record ``decay``, or ``None``."""
    if decay.cautious:
        return "the fused AdamHD kernels do not implement cautious_decay=True yet"
    return None


def _cpu_fused_by_default() -> bool:
    return os.environ.get("ADAMHD_FUSED_DEFAULT", "1") != "0"


def fused_is_default(params: list[Tensor]) -> bool:
    """``fused=None``: whether to take the fused kernel for this group.

    Yes where a verified kernel serves every parameter of the group: it is the fastest path
    measured (``adamhd bench step``). On CPU that means the C++ kernel could be built (the first
    use builds it, about a minute, then it is cached); set ``ADAMHD_FUSED_DEFAULT=0`` to keep
    torch's CPU convention (the for-loop path) instead. Like torch's fused AdamW, the kernel agrees
    with the for-loop path to float rounding, not bit for bit (torch's CPU ``sqrt`` goes through
    MKL VML); pass ``fused=False`` where bit-identity with ``torch.optim.AdamW()`` matters.
    """
    if not params:
        return False
    devices = {p.device.type for p in params}
    if len(devices) != 1:
        return False
    if devices == {"cpu"} and not _cpu_fused_by_default():
        return False
    return all(fused_unsupported_reason(p) is None for p in params)


def _lookup_abs_means(params: list[Tensor]) -> list[Any]:
    """``mean|p_t|`` per tensor: the value cached by the previous step if ``p`` is unchanged."""
    out: list[Any] = []
    for p in params:
        entry = _abs_means.get(p)
        if entry is not None and entry[0] == p._version and entry[1] == p.data_ptr():
            out.append(entry[2])
        else:
            out.append(None)
    return out


def _store_abs_means(params: list[Tensor], means: list[Any]) -> None:
    for p, mean in zip(params, means):
        _abs_means[p] = (p._version, p.data_ptr(), mean)


def fused_adamhd(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    delta_mus: list[Tensor],
    hyper: AdamStep,
    *,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    if not params:
        return
    if hyper.differentiable:
        raise RuntimeError("fused AdamHD kernels do not support differentiable=True")
    reason = fused_rule_reason(hyper.decay)
    if reason is not None:
        raise RuntimeError(f"fused AdamHD step impossible: {reason}")
    for p in params:
        reason = fused_unsupported_reason(p)
        if reason is not None:
            raise RuntimeError(f"fused AdamHD step impossible: {reason}")
    by_device: dict[torch.device, list[int]] = {}
    for i, p in enumerate(params):
        by_device.setdefault(p.device, []).append(i)
    for index in by_device.values():
        def pick(xs: list[Tensor], index: list[int] = index) -> list[Tensor]:
            return [xs[i] for i in index] if xs else []

        device = params[index[0]].device
        args = (
            pick(params),
            pick(grads),
            pick(exp_avgs),
            pick(exp_avg_sqs),
            pick(max_exp_avg_sqs),
            pick(state_steps),
            pick(delta_mus),
        )
        kwargs = dict(
            decay=hyper.decay,
            amsgrad=hyper.amsgrad,
            beta1=hyper.beta1,
            beta2=hyper.beta2,
            lr=hyper.lr,
            weight_decay=hyper.weight_decay,
            eps=hyper.eps,
            maximize=hyper.maximize,
            grad_scale=grad_scale,
            found_inf=found_inf,
        )
        if device.type == "cpu":
            _fused_cpu(*args, **kwargs)
        else:
            from adamhd.kernels import triton_adamhd

            triton_adamhd.fused_adamhd_triton(*args, capturable=hyper.capturable, **kwargs)


def _scalar(x: float | Tensor | None) -> float | None:
    if x is None:
        return None
    return float(x.detach().reshape(())) if isinstance(x, Tensor) else float(x)


def _fused_cpu(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, delta_mus, *, decay,
    amsgrad, beta1, beta2, lr, weight_decay, eps, maximize, grad_scale, found_inf,
) -> None:
    found = _scalar(found_inf)
    if found is not None and found != 0.0:
        return  # GradScaler found inf/nan: this step changes nothing
    module = _cpu_module()
    if module is None:  # fused_unsupported_reason said yes, so this is unreachable
        raise RuntimeError("the fused CPU kernel is not available")
    scale = _scalar(grad_scale)
    decays = weight_decay != 0
    adaptive = decay.adaptive
    want_sums = adaptive and decays
    abs_means: list[float] = []
    if want_sums:
        abs_means = _lookup_abs_means(params)
        stale = [i for i, mean in enumerate(abs_means) if mean is None]
        if stale:
            fresh = module.abs_sums([params[i] for i in stale]).tolist()
            for i, total in zip(stale, fresh):
                abs_means[i] = total / max(params[i].numel(), 1)
    decay_kind = 0 if not decays else (1 if decay.form == "explicit" else 2)
    sums = module.fused_step(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs if amsgrad else [],
        state_steps,
        delta_mus if (adaptive and decays) else [],
        abs_means,
        float(_scalar(lr)),
        float(beta1),
        float(beta2),
        float(eps),
        float(weight_decay),
        decay_kind,
        float("inf") if adaptive else float(decay.delta),
        float(decay.delta_scale),
        float(decay.delta_beta),
        adaptive,
        amsgrad,
        maximize,
        0.0 if scale is None else scale,
        want_sums,
    )
    torch.autograd.graph.increment_version(params)
    if want_sums:
        means = [s / max(p.numel(), 1) for s, p in zip(sums.tolist(), params)]
        _store_abs_means(params, means)
