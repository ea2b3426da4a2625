"""What the fused AdamHD kernels support, in one table, and the fused op's arguments.

Everything about the kernels' scope is read from here:

* the fused-eligibility decision (``adamhd.kernels.fused_unsupported_reason``,
  ``fused_rule_reason``, ``fused_update_reason``, hence ``fused=None``'s choice and the error
  ``fused=True`` raises);
* the CPU op's arguments, in order (``ARGS``): the Python call (``op_args``) and the schema string
  (``SCHEMA``, which must equal the ``TORCH_LIBRARY`` definition in ``adamhd_cpu.cpp``;
  ``tests/kernels/test_spec.py`` compares it with the registered op);
* the Triton launch's compile-time flags (``decay_kind``, ``update_args``, ``cautious``).

Adding a fused option: one edit here (its support entry; its argument in ``ARGS`` if it takes
one) plus its math in ``adamhd_cpu.cpp`` and ``triton_adamhd.py``, tested against the Python
definition (``tests/kernels``).

This module imports nothing of ``adamhd`` at run time; the records it reads are
``adamhd.optim.adamhd.step.AdamStep`` and ``AdamTensors``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from adamhd.optim.adamhd.step import AdamStep, AdamTensors

# ------------------------------------------------------------------------------------------------
# What the kernels support
# ------------------------------------------------------------------------------------------------

#: parameter (and moment) dtypes per device type
DTYPES: dict[str, tuple[torch.dtype, ...]] = {
    "cpu": (torch.float32, torch.float64, torch.bfloat16, torch.float16),
    "cuda": (torch.float32, torch.bfloat16, torch.float16),
}
#: decay rules (``adamhd.decay`` names); L2 is Huber with ``d = inf`` in the kernels
DECAY_RULES = ("huber", "l2")
#: decay forms and their code in the kernels (0: no decay, ``weight_decay == 0``)
DECAY_FORMS = {"explicit": 1, "proximal": 2}
#: cautious decay (decay only where ``sign(u)*sign(p_t) >= 0``)
CAUTIOUS_DECAY = True
#: Adam directions (``update=``) and their code in the kernels
UPDATE_KINDS = {"adam": 0, "atan2": 1, "softplus": 2}
#: ``UpdateRule`` options with a per-tensor reduction or extra state, per kernel: the CPU kernel
#: runs them in the same op call (a reduction phase per tensor, then the update: ``option_step``
#: in ``adamhd_cpu.cpp``); the Triton kernel runs none
UPDATE_OPTIONS: dict[str, tuple[str, ...]] = {
    "cpu": ("cautious", "trust_ratio", "adanorm", "diffgrad"),
    "cuda": (),
}
#: ``torch.nn.functional.softplus``'s default threshold: ``softplus(x) = x`` above it
SOFTPLUS_THRESHOLD = 20.0
#: torch's ``differentiable=True`` (autograd through the step): not in the kernels
DIFFERENTIABLE = False
#: AdamHD's ``state_dtype`` (moment storage, ``optim/adamhd/lowbit.py``) per kernel, and whether
#: the kernel rounds bf16 parameters stochastically (``bf16_stochastic_round``)
#: (low-bit groups take their own kernels: the CPU op ``LOWBIT_ARGS`` below, and the Triton
#: kernel ``adamhd.kernels.triton_lowbit``)
STATE_DTYPES: dict[str, tuple[str, ...]] = {"cpu": ("float32", "bfloat16", "int8"),
                                            "cuda": ("float32", "bfloat16", "int8")}
BF16_STOCHASTIC_ROUND = {"cpu": True, "cuda": True}
#: why a kernel lacks a state format (the reason ``fused=True`` reports)
STATE_DTYPE_GAP = ("it runs on the foreach and single-tensor paths there (working copies, "
                   "adamhd.optim.adamhd.lowbit)")


def dtype_reason(device_type: str, dtype: torch.dtype) -> str | None:
    """Why no kernel serves ``dtype`` parameters on ``device_type``, or ``None``."""
    if device_type not in DTYPES:
        return f"no fused AdamHD kernel is available for parameters on {device_type}"
    if dtype not in DTYPES[device_type]:
        kernel = "CPU" if device_type == "cpu" else "CUDA (Triton)"
        return f"the fused {kernel} kernel does not support {dtype} parameters"
    return None


def decay_reason(decay: Any) -> str | None:
    """Why the kernels cannot apply the decay rule record ``decay``, or ``None``."""
    if getattr(decay, "name", None) not in DECAY_RULES:
        return f"the fused AdamHD kernels do not implement the decay rule {decay!r}"
    if decay.form not in DECAY_FORMS:
        return f"the fused AdamHD kernels do not implement decay_form={decay.form!r}"
    if decay.cautious and not CAUTIOUS_DECAY:
        return "the fused AdamHD kernels do not implement cautious_decay=True"
    return None


def state_reason(group: Any, device_type: str | None = None) -> str | None:
    """Why the kernel of ``device_type`` (``None``: every kernel, as at construction, before the
    parameters' devices are looked at) cannot keep a param group's moments in its
    ``state_dtype`` or round its bf16 parameters stochastically, or ``None``."""
    kinds = [device_type] if device_type in STATE_DTYPES else list(STATE_DTYPES)
    dtype = group.get("state_dtype", "float32")
    reasons = []
    for kind in kinds:
        if dtype not in STATE_DTYPES[kind]:
            reasons.append(f"state_dtype={dtype!r} is not in the fused {kind} kernel: "
                           f"{STATE_DTYPE_GAP}")
        elif group.get("bf16_stochastic_round", False) and not BF16_STOCHASTIC_ROUND[kind]:
            reasons.append(f"bf16_stochastic_round is not in the fused {kind} kernel: "
                           f"{STATE_DTYPE_GAP}")
    return reasons[0] if len(reasons) == len(kinds) else None


def update_reason(update: Any, device_type: str | None = None) -> str | None:
    """Why the kernel of ``device_type`` cannot run the update rule record ``update``, or
    ``None``; without ``device_type``: why no kernel can (``None`` if one can)."""
    if update.update not in UPDATE_KINDS:
        return f"the fused AdamHD kernels do not implement update={update.update!r}"
    on = [f for f in ("cautious", "trust_ratio", "adanorm", "diffgrad") if getattr(update, f)]
    kinds = [device_type] if device_type is not None else list(UPDATE_OPTIONS)
    for kind in kinds:
        if all(f in UPDATE_OPTIONS.get(kind, ()) for f in on):
            return None
    where = f"the fused {device_type} kernel" if device_type else "the fused AdamHD kernels"
    return f"{where} does not implement {update.describe()}"


# ------------------------------------------------------------------------------------------------
# The values the kernels take, derived from a step's records
# ------------------------------------------------------------------------------------------------


def decay_kind(hyper: AdamStep) -> int:
    """0: no decay (``weight_decay == 0``), else the form's code (``DECAY_FORMS``)."""
    return 0 if not hyper.decays else DECAY_FORMS[hyper.decay.form]


def adaptive(hyper: AdamStep) -> bool:
    """Whether the kernel advances the adaptive threshold's EMA (``delta_mus``) this step."""
    return bool(hyper.decay.adaptive and hyper.decays)


def cautious(hyper: AdamStep) -> bool:
    return bool(hyper.decay.cautious and hyper.decays)


def update_args(hyper: AdamStep) -> tuple[int, float, float]:
    """``(kind, a, b)`` of the step's update rule: atan2 ``(1, a, b)``, softplus
    ``(2, beta, 20)``, Adam ``(0, 1, 1)``. Raises ``ValueError`` for a rule the kernels lack."""
    rule = hyper.update
    reason = update_reason(rule)
    if reason is not None:
        raise ValueError(reason)
    if rule.update == "atan2":
        return UPDATE_KINDS["atan2"], float(rule.atan2_a), float(rule.atan2_b)
    if rule.update == "softplus":
        return UPDATE_KINDS["softplus"], float(rule.softplus_beta), SOFTPLUS_THRESHOLD
    return UPDATE_KINDS["adam"], 1.0, 1.0


# ------------------------------------------------------------------------------------------------
# The CPU op: its arguments in order, from which the call and the schema follow
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """What one call of the op is built from (``rule_states``: each parameter's optimizer state,
    holding ``prev_grad``/``adanorm_e`` where the update rule keeps them)."""

    tensors: AdamTensors
    hyper: AdamStep
    grad_scale: Tensor | None
    found_inf: Tensor | None
    rule_states: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Arg:
    """One argument of ``adamhd::fused_step_``: its schema type, name and value for a call."""

    type: str
    name: str
    value: Callable[[Call], Any]


def _lr_tensor(c: Call) -> Tensor | None:
    return c.hyper.lr if isinstance(c.hyper.lr, Tensor) else None


def _rule_state(flag: str, key: str) -> Callable[[Call], list[Tensor]]:
    """The state list ``key`` of each parameter where the update rule has ``flag``, else []."""

    def value(c: Call) -> list[Tensor]:
        if not getattr(c.hyper.update, flag):
            return []
        if c.rule_states is None or any(key not in s for s in c.rule_states):
            raise ValueError(f"{flag}=True needs each parameter's {key!r} (rule_states)")
        return [s[key] for s in c.rule_states]

    return value


def _rules():
    from adamhd.optim.adamhd import update_rules

    return update_rules


ARGS: tuple[Arg, ...] = (
    Arg("Tensor(a!)[]", "params", lambda c: c.tensors.params),
    Arg("Tensor(b!)[]", "grads", lambda c: c.tensors.grads),
    Arg("Tensor(c!)[]", "exp_avgs", lambda c: c.tensors.exp_avgs),
    Arg("Tensor(d!)[]", "exp_avg_sqs", lambda c: c.tensors.exp_avg_sqs),
    Arg("Tensor(e!)[]", "max_exp_avg_sqs",
        lambda c: c.tensors.max_exp_avg_sqs if c.hyper.amsgrad else []),
    Arg("Tensor(f!)[]", "steps", lambda c: c.tensors.state_steps),
    Arg("Tensor(g!)[]", "mus", lambda c: c.tensors.delta_mus if adaptive(c.hyper) else []),
    Arg("Tensor?", "lr_tensor", _lr_tensor),
    Arg("Tensor?", "grad_scale", lambda c: c.grad_scale),
    Arg("Tensor?", "found_inf", lambda c: c.found_inf),
    Arg("float", "lr", lambda c: 0.0 if _lr_tensor(c) is not None else float(c.hyper.lr)),
    Arg("float", "beta1", lambda c: float(c.hyper.beta1)),
    Arg("float", "beta2", lambda c: float(c.hyper.beta2)),
    Arg("float", "eps", lambda c: float(c.hyper.eps)),
    Arg("float", "weight_decay", lambda c: float(c.hyper.weight_decay)),
    Arg("int", "decay_kind", lambda c: decay_kind(c.hyper)),
    Arg("float", "delta",
        lambda c: math.inf if c.hyper.decay.adaptive else float(c.hyper.decay.delta)),
    Arg("float", "delta_scale", lambda c: float(c.hyper.decay.delta_scale)),
    Arg("float", "delta_beta", lambda c: float(c.hyper.decay.delta_beta)),
    Arg("bool", "adaptive", lambda c: bool(c.hyper.decay.adaptive)),
    Arg("bool", "amsgrad", lambda c: c.hyper.amsgrad),
    Arg("bool", "maximize", lambda c: c.hyper.maximize),
    Arg("int", "update_kind", lambda c: update_args(c.hyper)[0]),
    Arg("float", "update_a", lambda c: update_args(c.hyper)[1]),
    Arg("float", "update_b", lambda c: update_args(c.hyper)[2]),
    Arg("bool", "cautious", lambda c: bool(c.hyper.decay.cautious)),
    Arg("Tensor(h!)[]", "prev_grads", _rule_state("diffgrad", "prev_grad")),
    Arg("Tensor(i!)[]", "adanorm_es", _rule_state("adanorm", "adanorm_e")),
    Arg("bool", "cautious_update", lambda c: bool(c.hyper.update.cautious)),
    Arg("bool", "trust_ratio", lambda c: bool(c.hyper.update.trust_ratio)),
    Arg("bool", "adanorm", lambda c: bool(c.hyper.update.adanorm)),
    Arg("bool", "diffgrad", lambda c: bool(c.hyper.update.diffgrad)),
    Arg("float", "adanorm_gamma", lambda c: float(_rules().ADANORM_GAMMA)),
    Arg("float", "cautious_floor", lambda c: float(_rules().CAUTIOUS_MIN_FRACTION)),
)

#: the op's schema, as ``adamhd_cpu.cpp`` defines it
SCHEMA = "fused_step_(" + ", ".join(f"{a.type} {a.name}" for a in ARGS) + ") -> ()"


def op_args(
    tensors: AdamTensors,
    hyper: AdamStep,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    rule_states: list[dict[str, Any]] | None = None,
) -> list[Any]:
    """The positional arguments of ``torch.ops.adamhd.fused_step_`` for one call."""
    call = Call(tensors, hyper, grad_scale, found_inf, rule_states)
    return [arg.value(call) for arg in ARGS]


# ------------------------------------------------------------------------------------------------
# The decay pass: ``adamhd::decay_``, the rules of ``adamhd.decay`` in one fused pass per group
# (``with_decoupled_decay`` over any base optimizer, CPU)
# ------------------------------------------------------------------------------------------------

#: parameter dtypes of the decay pass (CPU only: on CUDA the wrapper keeps torch's ops)
DECAY_PASS_DTYPES: tuple[torch.dtype, ...] = DTYPES["cpu"]
#: the decay pass covers cautious decay (with copies of ``p_t``) and both forms of both rules
DECAY_PASS_CAUTIOUS = True


@dataclass(frozen=True)
class DecayCall:
    """What one call of the decay pass is built from: the group's tensors, its rule record
    (``adamhd.decay.DecayRule``) and strength ``tau``; ``p_ts`` (cautious: copies of ``p_t``),
    ``mus`` (adaptive, computed in the pass: the EMAs it advances), ``ds`` (thresholds given)."""

    params: list[Tensor]
    p_ts: list[Tensor]
    mus: list[Tensor]
    ds: list[Any]
    rule: Any
    tau: float | Tensor


def _fixed_delta(c: DecayCall) -> float:
    delta = c.rule.delta
    return math.inf if delta == "adaptive" else float(delta)


DECAY_ARGS: tuple[Arg, ...] = (
    Arg("Tensor(a!)[]", "params", lambda c: c.params),
    Arg("Tensor[]", "p_ts", lambda c: c.p_ts),
    Arg("Tensor(b!)[]", "mus", lambda c: c.mus),
    Arg("Tensor[]", "ds", lambda c: c.ds),
    Arg("Tensor?", "tau_tensor", lambda c: c.tau if isinstance(c.tau, Tensor) else None),
    Arg("float", "tau", lambda c: 0.0 if isinstance(c.tau, Tensor) else float(c.tau)),
    Arg("int", "form", lambda c: DECAY_FORMS[c.rule.form]),
    Arg("float", "delta", _fixed_delta),
    Arg("float", "delta_scale", lambda c: float(c.rule.delta_scale)),
    Arg("float", "delta_beta", lambda c: float(c.rule.delta_beta)),
    Arg("bool", "adaptive", lambda c: bool(c.rule.adaptive)),
    Arg("bool", "cautious", lambda c: bool(c.rule.cautious)),
)

#: the decay pass's schema, as ``adamhd_cpu.cpp`` defines it
DECAY_SCHEMA = "decay_(" + ", ".join(f"{a.type} {a.name}" for a in DECAY_ARGS) + ") -> ()"


def decay_pass_reason(rule: Any, params: list[Tensor]) -> str | None:
    """Why the decay pass cannot apply ``rule`` to ``params``, or ``None``. It takes plain
    contiguous CPU tensors (not DTensor or other subclasses) of ``DECAY_PASS_DTYPES``; the
    in-place L2 form on bfloat16/float16 stays torch's (its foreach ops round ``1 - tau`` to the
    weights' dtype, which the pass does not copy)."""
    reason = decay_reason(rule)
    if reason is not None:
        return reason
    if rule.cautious and not DECAY_PASS_CAUTIOUS:
        return "the decay pass does not implement cautious_decay=True"
    in_place_l2 = rule.name == "l2" and rule.form == "explicit" and not rule.cautious
    for p in params:
        if type(p) not in (Tensor, torch.nn.Parameter) or p.device.type != "cpu":
            return "the decay pass takes plain CPU tensors"
        if p.dtype not in DECAY_PASS_DTYPES or not p.is_contiguous():
            return f"the decay pass does not take {p.dtype} or non-contiguous tensors"
        if in_place_l2 and p.dtype in (torch.bfloat16, torch.float16):
            return "the in-place L2 form on 16-bit weights stays torch's (foreach rounding)"
    return None


def decay_op_args(call: DecayCall) -> list[Any]:
    """The positional arguments of ``torch.ops.adamhd.decay_`` for one call."""
    return [arg.value(call) for arg in DECAY_ARGS]


# ------------------------------------------------------------------------------------------------
# Low-bit moments: ``adamhd::fused_lowbit_step_`` (CPU; issue 19). A group whose ``state_dtype``
# is not "float32" or with ``bf16_stochastic_round`` (``adamhd.optim.adamhd.lowbit.is_lowbit``)
# takes this op instead of ``fused_step_``: Adam's update only (the low-bit options refuse the
# other rules), no amsgrad; decay as ``fused_step_`` (both rules and forms, fixed or adaptive
# threshold, cautious).
# ------------------------------------------------------------------------------------------------

#: parameter dtypes of the low-bit op (float64 parameters keep float64 moments: not there)
LOWBIT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class LowbitCall:
    """What one call of the low-bit op is built from: ``Call``'s fields, the group's states
    (moments and int8 scales), each parameter's index in the optimizer, the group's options."""

    tensors: AdamTensors
    hyper: AdamStep
    grad_scale: Tensor | None
    found_inf: Tensor | None
    states: list[Any]
    positions: list[int]
    group: Any


def _scales(c: LowbitCall, key: str) -> list[Tensor]:
    return [s[f"{key}_scale"] for s in c.states if s[key].dtype == torch.uint8]


def _base(c: LowbitCall) -> Call:
    return Call(c.tensors, c.hyper, c.grad_scale, c.found_inf)


def _from_args(name: str) -> Callable[[LowbitCall], Any]:
    arg = next(a for a in ARGS if a.name == name)
    return lambda c: arg.value(_base(c))


LOWBIT_ARGS: tuple[Arg, ...] = (
    Arg("Tensor(a!)[]", "params", _from_args("params")),
    Arg("Tensor(b!)[]", "grads", _from_args("grads")),
    Arg("Tensor(c!)[]", "exp_avgs", lambda c: [s["exp_avg"] for s in c.states]),
    Arg("Tensor(d!)[]", "exp_avg_sqs", lambda c: [s["exp_avg_sq"] for s in c.states]),
    Arg("Tensor(e!)[]", "exp_avg_scales", lambda c: _scales(c, "exp_avg")),
    Arg("Tensor(f!)[]", "exp_avg_sq_scales", lambda c: _scales(c, "exp_avg_sq")),
    Arg("Tensor(g!)[]", "steps", _from_args("steps")),
    Arg("Tensor(h!)[]", "mus", _from_args("mus")),
    Arg("int[]", "positions", lambda c: list(c.positions)),
    *(Arg(a.type, a.name, _from_args(a.name)) for a in ARGS if a.name in (
        "lr_tensor", "grad_scale", "found_inf", "lr", "beta1", "beta2", "eps", "weight_decay",
        "decay_kind", "delta", "delta_scale", "delta_beta", "adaptive", "maximize", "cautious")),
    Arg("int", "seed", lambda c: int(c.group.get("rounding_seed", 0))),
    Arg("bool", "param_sr", lambda c: bool(c.group.get("bf16_stochastic_round", False))),
)

#: the low-bit op's schema, as ``adamhd_cpu.cpp`` defines it
LOWBIT_SCHEMA = ("fused_lowbit_step_(" + ", ".join(f"{a.type} {a.name}" for a in LOWBIT_ARGS)
                 + ") -> ()")


def lowbit_reason(params: list[Tensor]) -> str | None:
    """Why the low-bit op cannot take ``params`` (plain CPU tensors of ``LOWBIT_DTYPES``)."""
    for p in params:
        if type(p) not in (Tensor, torch.nn.Parameter) or p.device.type != "cpu":
            return ("the fused low-bit kernel takes plain CPU tensors (low-bit states on CUDA or "
                    "as DTensor shards run on the foreach and single-tensor paths)")
        if p.dtype not in LOWBIT_DTYPES:
            return (f"the fused low-bit CPU kernel does not take {p.dtype} parameters (float64 "
                    "parameters keep float64 moments; use fused=None or False)")
    return None


def lowbit_op_args(tensors: AdamTensors, hyper: AdamStep, grad_scale: Tensor | None,
                   found_inf: Tensor | None, states: list[Any], positions: list[int],
                   group: Any) -> list[Any]:
    """The positional arguments of ``torch.ops.adamhd.fused_lowbit_step_`` for one call."""
    call = LowbitCall(tensors, hyper, grad_scale, found_inf, states, positions, group)
    return [arg.value(call) for arg in LOWBIT_ARGS]
