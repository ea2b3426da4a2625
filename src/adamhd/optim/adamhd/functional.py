"""Functional core of AdamHD: Adam moments (exactly as ``torch.optim.AdamW``) plus a decay rule.

``adamhd()`` dispatches to one of three paths that compute the same thing:

* ``_single_tensor_step``: one tensor at a time (the readable reference, autograd-friendly);
* ``_multi_tensor_step``: ``torch._foreach_*`` ops over lists of tensors;
* the fused kernels of ``adamhd.kernels`` (one pass over memory per tensor).

The decay itself (L2 or Huber, explicit or proximal, fixed or adaptive threshold, optionally
cautious) lives in ``adamhd.decay``; this module only decides *when* it is applied: before the Adam
update for the explicit form (on the same ``p`` AdamW decays), after it for the proximal form. A
cautious rule needs the update's sign first, so its explicit form is applied after the moments,
just before ``p -= lr*u``. The hyperparameters come in one record (``AdamStep``), the group's
tensor lists in another (``AdamTensors``), both in ``adamhd.optim.adamhd.step``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import _get_value, _stack_if_compiling

from adamhd._torch_compat import to_scalar as _to_scalar
from adamhd.decay import DecayRule, decay_strength
from adamhd.distributed import any_dtensor, global_mean_abs, whole_mean_abs
from adamhd.optim.adamhd.step import AdamStep, AdamTensors, on_lists

__all__ = ["AdamStep", "AdamTensors", "adamhd", "adamhd_step"]


def adamhd(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    delta_mus: list[Tensor],
    hyper: AdamStep,
    *,
    foreach: bool = False,
    fused: bool = False,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    rule_states: list[dict[str, Tensor]] | None = None,
) -> None:
    """One AdamHD step over lists of tensors, updating ``params`` and the state lists in place.

    ``hyper``: the group's hyperparameters (``AdamStep.from_group``). ``delta_mus`` holds the
    adaptive threshold's EMA per tensor (empty for a fixed threshold). ``grad_scale``/``found_inf``
    (from ``torch.amp.GradScaler``) are honoured by the fused path only, as in torch.
    ``hyper.beta1``/``beta2`` may be 0-dim Tensors (see ``AdamHD``). An update rule other than
    plain Adam (``hyper.update``) runs in ``adamhd.optim.adamhd.rule_step`` (``rule_states``: each
    parameter's state dict, for the rules that keep state).
    """
    tensors = AdamTensors(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, delta_mus
    )
    if fused:
        from adamhd import kernels

        reason = kernels.fused_update_reason(hyper.update)
        if reason is not None:
            raise RuntimeError(f"fused step impossible: {reason}; use foreach or single")
        # the kernels take betas as numbers (torch's fused Adam reads Tensor betas the same way)
        hyper = dataclasses.replace(hyper, beta1=_number(hyper.beta1), beta2=_number(hyper.beta2))
        kernels.fused_adamhd(*tensors.lists(), hyper, grad_scale=grad_scale, found_inf=found_inf,
                             rule_states=rule_states)
        return
    if grad_scale is not None or found_inf is not None:
        raise RuntimeError("grad_scale/found_inf are only supported by the fused path")
    if not hyper.update.plain:
        from adamhd.optim.adamhd.rule_step import rules_adamhd

        rules_adamhd(tensors, hyper, rule_states or [{} for _ in tensors.params], foreach)
    elif foreach:
        _multi_tensor_step(tensors, hyper)
    else:
        _single_tensor_step(tensors, hyper)


def adamhd_step(tensors: AdamTensors, hyper: AdamStep, **options: Any) -> None:
    """``adamhd`` on a group's record of tensor lists (``AdamTensors``), with its options."""
    adamhd(*tensors.lists(), hyper, **options)


def _single_tensor_step(t: AdamTensors, hyper: AdamStep) -> None:
    params, grads, exp_avgs, exp_avg_sqs = t.params, t.grads, t.exp_avgs, t.exp_avg_sqs
    max_exp_avg_sqs, state_steps, delta_mus = t.max_exp_avg_sqs, t.state_steps, t.delta_mus
    decay, lr, beta1, beta2, eps = hyper.decay, hyper.lr, hyper.beta1, hyper.beta2, hyper.eps
    amsgrad, maximize = hyper.amsgrad, hyper.maximize
    capturable, differentiable = hyper.capturable, hyper.differentiable
    tensor_math = capturable or differentiable
    lr = _to_scalar(lr)  # a Tensor lr stays a 0-dim Tensor, as in torch's AdamW (same rounding)
    tau = decay_strength(lr, hyper.weight_decay)
    decays = hyper.decays
    if decays:
        # All thresholds before any tensor changes: one all-reduce for sharded (DTensor) params.
        abs_means = whole_mean_abs(params) if decay.adaptive else None
        all_thresholds = decay.thresholds(params, delta_mus, foreach=False, abs_means=abs_means)

    for i, param in enumerate(params):
        grad = grads[i] if not maximize else -grads[i]
        exp_avg = exp_avgs[i]
        exp_avg_sq = exp_avg_sqs[i]
        step_t = state_steps[i]
        if capturable and not torch.compiler.is_compiling():
            _check_capturable(param, step_t)

        step_t += 1

        if decays:
            thresholds = all_thresholds[i : i + 1]
            if decay.before_update and not decay.cautious:
                decay.apply_([param], tau, thresholds, foreach=False)

        # a Tensor beta1 in the parameter's dtype and device, as torch does (pytorch#140601)
        exp_avg.lerp_(grad, 1 - _like(beta1, param))
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

        if tensor_math:
            bias_correction1 = 1 - beta1**step_t
            bias_correction2 = 1 - beta2**step_t
            step_size_neg = (lr / bias_correction1).neg()
            bias_correction2_sqrt = bias_correction2.sqrt()
            if amsgrad:
                max_sq = max_exp_avg_sqs[i].clone() if differentiable else max_exp_avg_sqs[i]
                max_exp_avg_sqs[i].copy_(torch.maximum(max_sq, exp_avg_sq))
                second = max_exp_avg_sqs[i]
            else:
                second = exp_avg_sq
            # The 1-element step size is folded into denom: addcdiv_'s value must be a Number.
            denom = (second.sqrt() / (bias_correction2_sqrt * step_size_neg)).add_(
                eps / step_size_neg
            )
            numer, value = exp_avg.clone() if differentiable else exp_avg, 1.0
        else:
            step = _get_value(step_t)
            bias_correction1 = 1 - beta1**step
            bias_correction2 = 1 - beta2**step
            step_size = lr / bias_correction1
            bias_correction2_sqrt = bias_correction2**0.5
            if amsgrad:
                torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
                second = max_exp_avg_sqs[i]
            else:
                second = exp_avg_sq
            denom = (second.sqrt() / bias_correction2_sqrt).add_(eps)
            numer, value = exp_avg, -step_size

        # Cautious decay: the mask needs the update u (its sign is exp_avg's: the bias correction
        # and the denominator are positive) and p_t, so the explicit decay moves here and takes
        # the mask as it runs; the proximal one takes it now and decays after the update.
        masks = None
        if decays and decay.before_update and decay.cautious:
            decay.apply_([param], tau, thresholds, foreach=False, signs=[exp_avg])
        elif decays:
            masks = decay.masks([exp_avg], [param], foreach=False)
        param.addcdiv_(numer, denom, value=value)
        if decays and not decay.before_update:
            decay.apply_([param], tau, thresholds, foreach=False, masks=masks)


_single_tensor_adamhd = on_lists(
    _single_tensor_step, "_single_tensor_adamhd",
    "The single-tensor path on seven lists (kept for callers of the former signature).",
)


def _multi_tensor_step(t: AdamTensors, hyper: AdamStep) -> None:
    """The foreach path: per (device, dtype) bucket, ``torch._foreach_*`` ops over its lists."""
    decay, lr = hyper.decay, hyper.lr
    if not t.params:
        return
    if hyper.differentiable:
        raise RuntimeError("foreach=True does not support differentiable=True")
    if hyper.capturable:
        if not torch.compiler.is_compiling():
            for p, s in zip(t.params, t.state_steps):
                _check_capturable(p, s)
        if isinstance(lr, Tensor) and lr.dim() != 0:
            lr = lr.squeeze()
    else:
        lr = _get_value(lr)
    # Sharded (DTensor) params: every whole-tensor mean|p| with one all-reduce, before any update.
    abs_means = None
    if hyper.decays and decay.adaptive and any_dtensor(t.params):
        abs_means = global_mean_abs(t.params)

    grouped = Optimizer._group_tensors_by_device_and_dtype(
        list(t.lists()), with_indices=abs_means is not None
    )
    for lists, indices in grouped.values():
        bucket = AdamTensors(*cast(list[list[Tensor]], lists))
        means = None if abs_means is None else [abs_means[j] for j in indices]
        _foreach_bucket(bucket, hyper, lr, means)


def _foreach_bucket(
    t: AdamTensors, hyper: AdamStep, lr: float | Tensor, abs_means: list[Tensor] | None
) -> None:
    """One device and dtype of the foreach path: steps, decay, moments, update."""
    decay, beta1, amsgrad, maximize = hyper.decay, hyper.beta1, hyper.amsgrad, hyper.maximize
    decays = hyper.decays
    params, grads = t.params, t.grads
    # CPU, finite or adaptive Huber threshold: torch's fused Adam kernel does the moments and
    # the update in one pass instead of seven foreach ops; the decay is applied around it.
    fused_moments = (
        decays
        and not hyper.capturable
        and not decay.cautious  # the mask needs the moments before the update
        and params[0].is_cpu
        and _fused_adam_ok(decay, params[0].dtype)
        # torch's fused kernel walks memory linearly: p, grad and state must share a layout
        and all(p.is_contiguous() and g.is_contiguous() for p, g in zip(params, grads))
    )

    if maximize and not fused_moments:
        grads = torch._foreach_neg(grads)

    if not torch.compiler.is_compiling() and t.state_steps[0].is_cpu:
        torch._foreach_add_(t.state_steps, torch.tensor(1.0, device="cpu"), alpha=1.0)
    else:
        torch._foreach_add_(t.state_steps, 1)

    if decays:
        # The decay with a tensor lr (capturable) goes through per-tensor ops inside apply_.
        tau = decay_strength(lr, hyper.weight_decay)
        thresholds = decay.thresholds(params, t.delta_mus, foreach=True, abs_means=abs_means)
        if decay.before_update and not decay.cautious:
            decay.apply_(params, tau, thresholds, foreach=True)

    if fused_moments:
        # steps were advanced above; torch's kernel only reads them
        torch._fused_adam_(
            params, grads, t.exp_avgs, t.exp_avg_sqs, t.max_exp_avg_sqs if amsgrad else [],
            t.state_steps, lr=cast(float, lr), beta1=beta1, beta2=hyper.beta2,
            weight_decay=0.0, eps=hyper.eps, amsgrad=amsgrad, maximize=maximize,
        )
        if not decay.before_update:
            decay.apply_(params, tau, thresholds, foreach=True)
        return

    _foreach_moments_(t.exp_avgs, t.exp_avg_sqs, grads, beta1, hyper.beta2, params)
    del grads
    denom, step_sizes = _foreach_denominator(t, hyper, lr)

    # Cautious decay: masks from sign(u) = sign(exp_avg) and p_t (see the single path).
    masks = None
    if decays and decay.before_update and decay.cautious:
        decay.apply_(params, tau, thresholds, foreach=True, signs=t.exp_avgs)
    elif decays:
        masks = decay.masks(t.exp_avgs, params, foreach=True)
    if step_sizes is None:
        torch._foreach_addcdiv_(params, t.exp_avgs, denom)
    else:
        torch._foreach_addcdiv_(params, t.exp_avgs, denom, step_sizes)
    if decays and not decay.before_update:
        decay.apply_(params, tau, thresholds, foreach=True, masks=masks)


def _foreach_moments_(
    exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], grads: list[Tensor],
    beta1: float | Tensor, beta2: float | Tensor, params: list[Tensor],
) -> None:
    """``m = lerp(m, g, 1-beta1)``, ``v = beta2*v + (1-beta2)*g*g``, as torch's foreach AdamW."""
    torch._foreach_lerp_(exp_avgs, grads, 1 - _on_device(beta1, params))
    torch._foreach_mul_(exp_avg_sqs, beta2)
    if isinstance(beta2, Tensor):  # _foreach_addcmul_ takes a number only (pytorch#139795)
        scaled_grads = torch._foreach_mul(grads, 1 - beta2)
        torch._foreach_addcmul_(exp_avg_sqs, scaled_grads, grads, 1.0)
        del scaled_grads
    else:
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)


def _foreach_denominator(
    t: AdamTensors, hyper: AdamStep, lr: float | Tensor
) -> tuple[list[Tensor], list[float] | None]:
    """``sqrt(v_hat) + eps`` per tensor, and the step sizes ``-lr/(1-beta1**t)`` (``None`` when
    capturable: then they are folded into the denominator, as in torch's foreach AdamW)."""
    beta1, beta2, eps = hyper.beta1, hyper.beta2, hyper.eps
    if hyper.amsgrad:
        torch._foreach_maximum_(t.max_exp_avg_sqs, t.exp_avg_sqs)
        denom = torch._foreach_sqrt(t.max_exp_avg_sqs)
    else:
        denom = torch._foreach_sqrt(t.exp_avg_sqs)

    if hyper.capturable:
        bias_correction1 = torch._foreach_pow(beta1, t.state_steps)
        bias_correction2 = torch._foreach_pow(beta2, t.state_steps)
        torch._foreach_sub_(bias_correction1, 1)  # beta1**t - 1 = -(1 - beta1**t)
        torch._foreach_sub_(bias_correction2, 1)
        torch._foreach_neg_(bias_correction2)
        torch._foreach_div_(bias_correction1, lr)
        torch._foreach_reciprocal_(bias_correction1)  # -lr / (1 - beta1**t)
        torch._foreach_sqrt_(bias_correction2)
        torch._foreach_div_(denom, bias_correction2)
        torch._foreach_add_(denom, eps)
        torch._foreach_div_(denom, bias_correction1)
        return denom, None
    steps = [_get_value(s) for s in t.state_steps]
    step_sizes = _stack_if_compiling([(lr / (1 - beta1**s)) * -1 for s in steps])
    bias_correction2_sqrt = [(1 - beta2**s) ** 0.5 for s in steps]
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    return denom, step_sizes


def _like(beta: float | Tensor, p: Tensor) -> float | Tensor:
    return beta.to(device=p.device, dtype=p.dtype) if isinstance(beta, Tensor) else beta


def _on_device(beta: float | Tensor, ps: list[Tensor]) -> float | Tensor:
    """A Tensor beta on the group's device (torch keeps a CPU one where it is)."""
    if isinstance(beta, Tensor) and not ps[0].is_cpu:
        return beta.to(device=ps[0].device)
    return beta


def _number(x: float | Tensor) -> float:
    return float(x) if isinstance(x, Tensor) else x


def _fused_adam_ok(decay: DecayRule, dtype: torch.dtype) -> bool:
    """Whether the foreach path may use torch's fused Adam kernel for this group.

    Not for ``delta=inf`` (that must stay bit-identical to torch's foreach AdamW), nor under
    ``torch.compile``.
    """
    if not decay.adaptive and math.isinf(float(decay.delta)):
        return False
    return (
        hasattr(torch, "_fused_adam_")
        and dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)
        and not torch.compiler.is_compiling()
    )


def _check_capturable(param: Tensor, step: Tensor) -> None:
    if param.device != step.device:
        raise RuntimeError(
            "capturable=True needs each parameter's step on the parameter's device; "
            f"got a parameter on {param.device} and its step on {step.device}"
        )
