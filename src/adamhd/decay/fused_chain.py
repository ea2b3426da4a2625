"""The fused chain: ``with_decoupled_decay(torch.optim.Adam)`` (or ``AdamW``) as ONE call of
AdamHD's fused CPU kernel per param group.

The wrapper runs its base with ``weight_decay=0``, so on an Adam/AdamW base its step is exactly
Adam + the decoupled rule, which is AdamHD's step (``adamhd.optim.adamhd``). Where
``chain_reason(optimizer)`` is ``None``, the wrapper runs each group's step as one call of
``adamhd.kernels.fused_step`` (moments, update, L2/Huber decay in either form, the adaptive
threshold's ``mean|p_t|`` and EMA, the cautious mask, ``grad_scale`` unscaling: one pass over
``p``, ``g``, ``m``, ``v``) instead of the base's fused step plus a separate decay pass.

* **State stays the base's.** The state is created by the base's own ``_init_group`` (``step``,
  ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` with amsgrad: dtypes and devices as torch
  makes them) plus the wrapper's ``delta_mu``; the kernel works on those tensors in place. A
  checkpoint of the chain loads into the unfused wrapper and into ``torch.optim.Adam``, and back.
* **Which groups.** ``fused=True`` groups (the base would take torch's fused kernel; its for-loop
  and foreach paths round differently, so ``fused=None``/``False`` keep them), on plain CPU
  tensors of the kernel's dtypes with dense gradients of the same dtype and shape, float betas;
  not ``decay="cpr"`` nor ``decay_scaling="stable"`` (their statistics are outside the kernel),
  not under ``torch.compile``. A step runs the chain only if every group with a gradient can
  take it (a step is never half chained); otherwise the wrapper's unfused path runs.
* **Equal to the unfused wrapper to rounding, not bit for bit.** The kernel computes the decayed
  weight and the update in float (double for float64) and rounds once, where the unfused path
  rounds the decayed ``p`` before the base step (bfloat16: one rounding less); explicit Huber is
  ``p*(1 - tau) + tau*(p - clip(p))``, not ``p - tau*clip(p)``. The cautious mask takes the sign
  of ``u`` from ``exp_avg`` (exact), where the unfused wrapper takes it from ``p_t - p_new``, which
  is 0 (so: decay) where the update rounds away in the weights' dtype. Explicit L2 stays
  ``p*(1 - tau)``.
* GradScaler: a skipped step never reaches the chain (the wrapper's skip path runs first); a step
  with a finite ``found_inf`` passes ``grad_scale``/``found_inf`` to the kernel, which unscales
  the gradients in place as torch's fused Adam does. A first ``delta_mu`` is created as NaN (the
  kernel's guarded EMA starts it at ``mean|p_t|``) and stored only after the group's call
  succeeded; the kernel checks every tensor before it changes anything.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from adamhd.decay.options import rule_from_group
from adamhd.decay.threshold import mu_dtype
from adamhd.kernels import fused_rule_reason, fused_step, fused_unsupported_reason

__all__ = ["CHAIN_BASES", "chain_reason", "chain_step"]

#: the bases whose step with ``weight_decay=0`` is AdamHD's update (exact classes, not subclasses:
#: a subclass may change the step)
CHAIN_BASES: tuple[type, ...] = (torch.optim.Adam, torch.optim.AdamW)
PLAIN_TYPES = (Tensor, torch.nn.Parameter)


def chain_reason(optimizer: Any) -> str | None:
    """Why this step of the wrapper ``optimizer`` cannot run as the fused chain, or ``None``."""
    base = optimizer._decay_base
    if base not in CHAIN_BASES:
        return f"the base {base.__name__} is not torch.optim.Adam or torch.optim.AdamW"
    if torch.compiler.is_compiling():
        return "the fused chain is not traced by torch.compile"
    for group in optimizer.param_groups:
        reason = _group_reason(group, optimizer.state)
        if reason is not None:
            return reason
    return None


def _group_reason(group: dict[str, Any], state: Any) -> str | None:
    params = [p for p in group["params"] if p.grad is not None]
    if not params:
        return None
    if group.get("fused") is not True:
        return "the group does not set fused=True (the base's own path rounds differently)"
    if group["decay"] == "cpr" or group["decay_scaling"] == "stable":
        return "decay='cpr' and decay_scaling='stable' are not in the fused kernel"
    if group.get("differentiable") or any(isinstance(b, Tensor) for b in group["betas"]):
        return "differentiable=True and Tensor betas are not in the fused chain"
    rule = rule_from_group(group)
    if group["decay"] == "l2" and rule.before_update and not rule.cautious:
        return ("explicit L2 without the mask is torch's AdamW: the base's own fused step keeps "
                "its bits")
    reason = fused_rule_reason(rule)
    if reason is not None:
        return reason
    for p in params:
        reason = _tensor_reason(p, state.get(p))
        if reason is not None:
            return reason
    return None


def _tensor_reason(p: Tensor, entry: dict[str, Any] | None) -> str | None:
    """The kernel's demands on one parameter, its gradient and its (existing) moments."""
    if type(p) not in PLAIN_TYPES or p.device.type != "cpu":
        return "the fused chain takes plain CPU tensors"
    reason = fused_unsupported_reason(p)
    if reason is not None:
        return reason
    others = [p.grad] + [entry[k] for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
                         if entry and k in entry]
    for t in others:
        if (type(t) not in PLAIN_TYPES or t.is_sparse or t.device != p.device
                or t.dtype != p.dtype or t.shape != p.shape):
            return "a gradient or moment differs from its parameter in type, dtype or shape"
    return None


def chain_step(optimizer: Any, coefficients: list[float], mu_key: str) -> None:
    """One step of every group as one fused kernel call each (``chain_reason`` was ``None``).
    ``coefficients``: each group's decay coefficient ``c`` (``tau = lr*c``); ``mu_key``: the
    state key of the adaptive threshold's EMA."""
    grad_scale = getattr(optimizer, "grad_scale", None)
    found_inf = getattr(optimizer, "found_inf", None)
    for group, c in zip(optimizer.param_groups, coefficients):
        _group_step(optimizer, group, c, mu_key, grad_scale, found_inf)


def _group_step(optimizer: Any, group: dict[str, Any], coefficient: float, mu_key: str,
                grad_scale: Tensor | None, found_inf: Tensor | None) -> None:
    from adamhd.optim.adamhd.step import AdamStep, AdamTensors  # the records, as kernels do

    t = AdamTensors()
    optimizer._init_group(group, t.params, t.grads, t.exp_avgs, t.exp_avg_sqs,
                          t.max_exp_avg_sqs, t.state_steps)  # the base's own state format
    if not t.params:
        return
    rule = rule_from_group(group)
    beta1, beta2 = group["betas"]
    hyper = AdamStep(decay=rule, lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                     weight_decay=coefficient, amsgrad=group["amsgrad"],
                     maximize=group["maximize"])
    new_mus: dict[Tensor, Tensor] = {}
    if rule.adaptive and hyper.decays:
        for p in t.params:
            mu = optimizer.state[p].get(mu_key)
            if mu is None:  # NaN: the guarded EMA takes mean|p_t| (mu_1 = a_1)
                mu = new_mus[p] = torch.full((), math.nan, dtype=mu_dtype(p), device=p.device)
            t.delta_mus.append(mu)
    fused_step(t, hyper, grad_scale=grad_scale, found_inf=found_inf)
    for p, mu in new_mus.items():
        optimizer.state[p][mu_key] = mu
