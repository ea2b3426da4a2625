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
  ``adamhd.optim.adamhd.step.AdamStep`` (its ``weight_decay`` is the coefficient:
  ``tau = lr*weight_decay``). ``fused_step(tensors, hyper, ...)`` is the same on the group's
  record of lists (``AdamTensors``).
* What the kernels support (dtypes, decay and update rules) and the op's arguments: one table,
  ``adamhd.kernels.spec``; the functions above read it.
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

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from adamhd.kernels import spec
from adamhd.kernels.spec import SOFTPLUS_THRESHOLD, UPDATE_KINDS, update_args  # noqa: F401

if TYPE_CHECKING:
    from adamhd.optim.adamhd.step import AdamStep, AdamTensors

__all__ = [
    "forget_abs_means",
    "fused_adamhd",
    "fused_decay_",
    "fused_decay_reason",
    "fused_step",
    "fused_is_default",
    "fused_rule_reason",
    "fused_state_reason",
    "fused_unsupported_reason",
    "fused_update_reason",
    "prepare",
]


CPU_DTYPES = spec.DTYPES["cpu"]
CUDA_DTYPES = spec.DTYPES["cuda"]

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
    """``None`` if a fused kernel can update ``p`` (``spec.DTYPES``), else why not."""
    if p.is_sparse or torch.is_complex(p):
        return "fused AdamHD kernels support dense real parameters only"
    reason = spec.dtype_reason(p.device.type, p.dtype)
    if reason is not None:
        return reason
    if p.device.type == "cpu":
        if _cpu_module() is None:
            from adamhd.kernels import cpu

            return cpu.build_error()
        return None
    return _triton_reason()


def fused_rule_reason(decay: Any) -> str | None:
    """Why the fused kernels cannot apply the decay rule record ``decay``, or ``None``.

    They implement what ``adamhd.kernels.spec`` lists: L2 and Huber decay (fixed or adaptive
    threshold), explicit or proximal, with or without ``cautious`` (decay only where
    ``sign(u)*sign(p_t) >= 0``).
    """
    return spec.decay_reason(decay)


def fused_state_reason(group: Any) -> str | None:
    """Why the fused kernels cannot keep a param group's moments in its ``state_dtype``
    (``adamhd.optim.adamhd.lowbit``) or apply its ``bf16_stochastic_round``, or ``None``
    (``adamhd.kernels.spec.STATE_DTYPES``)."""
    return spec.state_reason(group)


def fused_update_reason(update: Any, device_type: str | None = None) -> str | None:
    """Why the fused kernel for ``device_type`` (without it: every fused kernel) cannot run the
    update rule record ``update`` (``adamhd.optim.adamhd.update_rules.UpdateRule``), or ``None``.
    They run what ``adamhd.kernels.spec`` lists: ``update="adam"``, ``"atan2"``, ``"softplus"``;
    the options with a per-tensor reduction or extra state (``cautious``, ``trust_ratio``,
    ``adanorm``, ``diffgrad``) on CPU only. Without ``device_type``: ``None`` where some kernel
    runs it."""
    return spec.update_reason(update, device_type)


def prepare(params: list[Tensor], fused: bool | None) -> None:
    """Load the kernels that a group of ``params`` may take (``fused`` its option), building the
    CPU extension on first use: called at construction, so the first step, compiled or not,
    finds them loaded and ``torch.compile`` traces no loader (hashing, files, locks)."""
    if fused is False:
        return
    types = {p.device.type for p in params if spec.dtype_reason(p.device.type, p.dtype) is None}
    if "cpu" in types and (fused or _cpu_fused_by_default()):
        _cpu_module()
    if types - {"cpu"}:
        _triton_reason()


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


def fused_step(
    tensors: AdamTensors,
    hyper: AdamStep,
    *,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    rule_states: list[dict[str, Any]] | None = None,
) -> None:
    """``fused_adamhd`` on the record: one call per device (CPU op or Triton launch)."""
    params = tensors.params
    if not params:
        return
    if hyper.differentiable and not spec.DIFFERENTIABLE:
        raise RuntimeError("fused AdamHD kernels do not support differentiable=True")
    reason = fused_rule_reason(hyper.decay)
    if reason is not None:
        raise RuntimeError(f"fused AdamHD step impossible: {reason}")
    if torch.compiler.is_compiling():  # traced once; the op checks every tensor at run time
        _check_update(hyper, [params[0].device.type])
        if params[0].device.type == "cpu":
            _fused_cpu(tensors, hyper, grad_scale, found_inf, rule_states)
        else:
            _fused_triton(tensors, hyper, grad_scale, found_inf)
        return
    plan = _plan(params)
    if plan.reason is not None:
        raise RuntimeError(f"fused AdamHD step impossible: {plan.reason}")
    if not hyper.update.elementwise:  # every device's kernel must run the options: check first
        _check_update(hyper, [params[index[0]].device.type for index in plan.by_device])
    for index in plan.by_device:
        single = len(plan.by_device) == 1
        part = tensors if single else tensors.select(index)
        states = rule_states if single or rule_states is None else [rule_states[i] for i in index]
        if plan.device_type == "cpu" or part.params[0].device.type == "cpu":
            _fused_cpu(part, hyper, grad_scale, found_inf, states)
        else:
            _fused_triton(part, hyper, grad_scale, found_inf)


def _on_lists() -> Any:
    from adamhd.optim.adamhd.step import on_lists

    return on_lists(fused_step, "fused_adamhd", """One fused step of a group's lists (the fields
    of ``AdamTensors``, in order), then ``hyper``; ``fused_step`` on the record. ``rule_states``:
    each parameter's state dict where the update rule keeps state (``prev_grad`` for
    ``diffgrad``, ``adanorm_e`` for ``adanorm``).""")


fused_adamhd = _on_lists()


def _check_update(hyper: AdamStep, device_types: list[str]) -> None:
    for device_type in device_types:
        reason = spec.update_reason(hyper.update, device_type)
        if reason is not None:
            raise RuntimeError(f"fused AdamHD step impossible: {reason}")


def _fused_triton(tensors: AdamTensors, hyper: AdamStep, grad_scale, found_inf) -> None:
    from adamhd.kernels import triton_adamhd

    triton_adamhd.launch(tensors, hyper, grad_scale=grad_scale, found_inf=found_inf)


def _cpu_op():
    module = _cpu_module()
    if module is None:  # fused_unsupported_reason said yes, so this is unreachable
        raise RuntimeError("the fused CPU kernel is not available")
    return torch.ops.adamhd.fused_step_


def _fused_cpu(
    tensors: AdamTensors, hyper: AdamStep, grad_scale, found_inf, rule_states=None
) -> None:
    """One call of the C++ op for the whole list: no per-tensor Python work, no host sync. Its
    arguments are ``adamhd.kernels.spec.ARGS``."""
    _cpu_op()(*spec.op_args(tensors, hyper, grad_scale, found_inf, rule_states))


# ------------------------------------------------------------------------------------------------
# The decay pass of ``with_decoupled_decay`` (``adamhd::decay_``, CPU; issue 20)
# ------------------------------------------------------------------------------------------------


def fused_decay_reason(rule: Any, params: list[Tensor]) -> str | None:
    """Why the fused decay pass cannot apply the decay rule record ``rule`` to ``params`` now
    (``spec.decay_pass_reason``; not while ``torch.compile`` traces; the CPU extension must
    build), or ``None``."""
    if torch.compiler.is_compiling():
        return "the fused decay pass is not traced by torch.compile"
    reason = spec.decay_pass_reason(rule, params)
    if reason is None and _cpu_module() is None:
        from adamhd.kernels import cpu

        return cpu.build_error()
    return reason


def fused_decay_(
    params: list[Tensor],
    rule: Any,
    tau: float | Tensor,
    *,
    p_ts: list[Tensor] | None = None,
    mus: list[Tensor] | None = None,
    ds: list[Tensor] | None = None,
) -> None:
    """``rule`` applied to ``params`` in place, one op call for the list (``adamhd_cpu.cpp``,
    ``decay_``). ``p_ts``: copies of ``p_t`` (cautious; ``params`` then hold the base step's
    result). Adaptive threshold: ``ds`` (0-dim thresholds) if given, else computed in the pass
    from ``mean|p_t|`` (of ``p_ts`` if given, else of ``params``), advancing ``mus`` (a NaN
    ``mu`` starts at ``mean|p_t|``)."""
    if params:
        _cpu_op()  # loads the extension
        call = spec.DecayCall(params, p_ts or [], mus or [], ds or [], rule, tau)
        torch.ops.adamhd.decay_(*spec.decay_op_args(call))
