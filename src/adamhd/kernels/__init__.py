"""Fused AdamHD kernels: one pass over memory per step, the same math as ``adamhd.functional``.

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
  With ``grad_scale`` (``torch.amp.GradScaler``) the gradients are unscaled in place in the same
  pass, as torch's fused AdamW does; a step with a non-zero ``found_inf`` changes nothing
  (weights, state, gradients).

Kernels:

* CPU: a C++ kernel (``adamhd_cpu.cpp``, ``at::vec``), compiled on first use and cached by torch
  (see ``adamhd.kernels.cpu``), registered as the custom op ``torch.ops.adamhd.fused_step_`` (with a
  fake implementation, so ``torch.compile`` traces it as one opaque op). One call per group: the
  tensors are cut into chunks that the threads of one parallel region share, so small tensors cost
  no thread start-up each. If it cannot be built (no compiler), ``fused=None`` uses torch's default
  path for the device and ``fused=True`` raises with the reason.
* CUDA: a Triton kernel (``adamhd.kernels.triton_adamhd``), one launch for all the tensors of a
  dtype (pointer and size tables), ``capturable``; its math is tested under ``TRITON_INTERPRET=1``,
  it has not been timed on a GPU.

Adaptive threshold without an extra pass: the kernels compute ``sum|p_new|`` per tensor while they
write ``p`` and keep it for the next step's ``mean|p_t|``, together with ``p._version`` (after the
step), ``p.data_ptr()`` and ``p.numel()``; if any of them changed (weights loaded, pruned in place,
...), ``mean|p|`` is recomputed. On CPU that table lives in C++ (weak references: it keeps nothing
alive); on CUDA in a weak Python table. Writes through ``p.data`` do not bump ``p._version``: after
such writes call ``forget_abs_means()``. The table is not part of ``state_dict`` (a version number
means nothing in another process), so a resumed run recomputes ``mean|p|`` once, with the same
blocking, so the resumed run is bit-exact.

Non-finite statistic: if ``mean|p_t|`` is not finite (a NaN or inf weight), ``mu`` keeps its value;
if ``mu`` is not finite, it takes ``mean|p_t|``. One NaN weight costs one element, as in AdamW.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

if TYPE_CHECKING:
    from adamhd.optim.adamhd.step import AdamStep

__all__ = [
    "forget_abs_means",
    "fused_adamhd",
    "fused_is_default",
    "fused_rule_reason",
    "fused_unsupported_reason",
    "fused_update_reason",
]


CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# CUDA (Triton) only: param -> (p._version after the step, p.data_ptr(), mean|p| as a 0-dim tensor)
_abs_means: WeakIdKeyDictionary = WeakIdKeyDictionary()


def forget_abs_means(params: list[Tensor] | None = None) -> None:
    """Drop the cached ``mean|p|`` (all, or of ``params``): the next step recomputes it."""
    from adamhd.kernels import cpu

    module = cpu.loaded()
    if module is not None:
        module.forget(list(params or []), params is None)
    if params is None:
        _abs_means.clear()
        return
    for p in params:
        _abs_means.pop(p, None)


def _lookup_abs_means(params: list[Tensor]) -> list[Any]:
    """CUDA: ``mean|p_t|`` per tensor, as cached by the previous step if ``p`` is unchanged."""
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
    """Why the fused kernels cannot apply the decay rule record ``decay``, or ``None``.

    They implement L2 and Huber decay (fixed or adaptive threshold), explicit or proximal, with
    or without ``cautious`` (decay only where ``sign(u)*sign(p_t) >= 0``).
    """
    if getattr(decay, "name", None) not in ("huber", "l2"):
        return f"the fused AdamHD kernels do not implement the decay rule {decay!r}"
    return None


UPDATE_KINDS = {"adam": 0, "atan2": 1, "softplus": 2}
SOFTPLUS_THRESHOLD = 20.0  # torch.nn.functional.softplus's default: softplus(x) = x above it


def fused_update_reason(update: Any) -> str | None:
    """Why the fused kernels cannot run the update rule record ``update``
    (``adamhd.update_rules.UpdateRule``), or ``None``: they run ``update="adam"``, ``"atan2"`` and
    ``"softplus"``, not the options with a per-tensor reduction or extra state (``cautious``,
    ``trust_ratio``, ``adanorm``, ``diffgrad``)."""
    if update.update not in UPDATE_KINDS:
        return f"the fused AdamHD kernels do not implement update={update.update!r}"
    if not update.elementwise:
        return f"the fused AdamHD kernels do not implement {update.describe()}"
    return None


def update_args(hyper: AdamStep) -> tuple[int, float, float]:
    """``(kind, a, b)`` of the step's update rule for the kernels: atan2 ``(1, a, b)``, softplus
    ``(2, beta, 20)``, Adam ``(0, 1, 1)``. Raises ``ValueError`` for a rule they lack."""
    rule = hyper.update
    reason = fused_update_reason(rule)
    if reason is not None:
        raise ValueError(reason)
    if rule.update == "atan2":
        return 1, float(rule.atan2_a), float(rule.atan2_b)
    if rule.update == "softplus":
        return 2, float(rule.softplus_beta), SOFTPLUS_THRESHOLD
    return 0, 1.0, 1.0


def _cpu_fused_by_default() -> bool:
    return os.environ.get("ADAMHD_FUSED_DEFAULT", "1") != "0"


@dataclass(frozen=True)
class _Plan:
    """What a list of parameters allows, decided once per list (not per step).

    ``reason``: why no fused kernel serves every tensor (``None``: one does). ``device_type``: the
    one device type of the list, or ``None`` if mixed; ``by_device``: index lists per device.
    """

    reason: str | None
    device_type: str | None
    by_device: tuple[tuple[int, ...], ...]


_plans: dict[tuple[int, ...], _Plan] = {}
_MAX_PLANS = 64


def _make_plan(params: list[Tensor]) -> _Plan:
    reason = next((r for r in map(fused_unsupported_reason, params) if r is not None), None)
    by_device: dict[torch.device, list[int]] = {}
    for i, p in enumerate(params):
        by_device.setdefault(p.device, []).append(i)
    types = {d.type for d in by_device}
    return _Plan(reason, types.pop() if len(types) == 1 else None,
                 tuple(tuple(v) for v in by_device.values()))


def _plan(params: list[Tensor]) -> _Plan:
    """The plan of ``params``, cached by the identities of the tensors.

    A cached plan is only a fast path: the CPU kernel checks every tensor's device, dtype and
    shape again in C++ (cheaply) and raises before changing anything.
    """
    key = tuple(map(id, params))
    plan = _plans.get(key)
    if plan is None:
        if len(_plans) >= _MAX_PLANS:
            _plans.clear()
        plan = _plans[key] = _make_plan(params)
    return plan


def forget_plans() -> None:
    """Forget the cached plans (after the CPU kernel's availability changed)."""
    _plans.clear()


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
    plan = _make_plan(params) if torch.compiler.is_compiling() else _plan(params)
    if plan.device_type is None or plan.reason is not None:
        return False
    return plan.device_type != "cpu" or _cpu_fused_by_default()


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
    lists = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, delta_mus)
    if torch.compiler.is_compiling():  # traced once; the op checks every tensor at run time
        if params[0].device.type == "cpu":
            _fused_cpu(lists, hyper, grad_scale, found_inf)
        else:
            _fused_triton(lists, hyper, grad_scale, found_inf)
        return
    plan = _plan(params)
    if plan.reason is not None:
        raise RuntimeError(f"fused AdamHD step impossible: {plan.reason}")
    for index in plan.by_device:
        part = lists
        if len(plan.by_device) > 1:
            part = tuple([xs[i] for i in index] if xs else [] for xs in lists)
        if plan.device_type == "cpu" or part[0][0].device.type == "cpu":
            _fused_cpu(part, hyper, grad_scale, found_inf)
        else:
            _fused_triton(part, hyper, grad_scale, found_inf)


def _fused_triton(lists, hyper: AdamStep, grad_scale, found_inf) -> None:
    from adamhd.kernels import triton_adamhd

    triton_adamhd.fused_adamhd_triton(
        *lists, decay=hyper.decay, amsgrad=hyper.amsgrad, beta1=hyper.beta1, beta2=hyper.beta2,
        lr=hyper.lr, weight_decay=hyper.weight_decay, eps=hyper.eps, maximize=hyper.maximize,
        capturable=hyper.capturable, grad_scale=grad_scale, found_inf=found_inf,
        update=update_args(hyper),
    )


def _cpu_op():
    module = _cpu_module()
    if module is None:  # fused_unsupported_reason said yes, so this is unreachable
        raise RuntimeError("the fused CPU kernel is not available")
    return torch.ops.adamhd.fused_step_


def _decay_kind(decay, weight_decay: float) -> int:
    """0: no decay (``weight_decay == 0``), 1: explicit, 2: proximal. L2 decay is Huber decay with
    ``d = inf`` in either form (``excess = 0``), so it takes the same code."""
    if weight_decay == 0:
        return 0
    return 1 if decay.form == "explicit" else 2


def _fused_cpu(lists, hyper: AdamStep, grad_scale, found_inf) -> None:
    """One call of the C++ op for the whole list: no per-tensor Python work, no host sync."""
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, delta_mus = lists
    decay = hyper.decay
    adaptive = decay.adaptive
    lr = hyper.lr
    lr_tensor = lr if isinstance(lr, Tensor) else None
    _cpu_op()(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs if hyper.amsgrad else [],
        state_steps,
        delta_mus if adaptive and hyper.decays else [],
        lr_tensor,
        grad_scale,
        found_inf,
        0.0 if lr_tensor is not None else float(lr),
        float(hyper.beta1),
        float(hyper.beta2),
        float(hyper.eps),
        float(hyper.weight_decay),
        _decay_kind(decay, hyper.weight_decay),
        math.inf if adaptive else float(decay.delta),
        float(decay.delta_scale),
        float(decay.delta_beta),
        adaptive,
        hyper.amsgrad,
        hyper.maximize,
        *update_args(hyper),
        bool(decay.cautious),
    )
