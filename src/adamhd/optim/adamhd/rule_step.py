"""AdamHD's step with an update rule other than plain Adam (``adamhd.optim.adamhd.update_rules``).

The same decay placement as ``adamhd.optim.adamhd.functional`` (explicit before the update,
proximal after, cautious decay masked by the final ``u``), with the step written out as
``p -= lr*u`` so that the rule can shape ``u``. ``foreach=True`` advances steps and moments with
``torch._foreach_*`` ops; the direction, masks and ratios are per tensor on both paths (they are
the rule's math, kept in one place). Sharded DTensor parameters are processed shard by shard; their
norms and means are of the whole tensor (one all-reduce per statistic kind)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import _get_value

from adamhd._torch_compat import to_scalar as _to_scalar
from adamhd.decay import decay_strength
from adamhd.distributed import is_dtensor, whole_mean_abs
from adamhd.optim.adamhd import update_rules as R
from adamhd.optim.adamhd.step import AdamStep, AdamTensors
from adamhd.transforms.stats import Request, local, statistics

__all__ = ["rules_adamhd"]


def _whole(kind: str, xs: list[Tensor], like: list[Tensor]) -> list[Tensor]:
    """Whole-tensor ``kind`` ("norm"/"mean") of local shards ``xs`` laid out like ``like``."""
    wrapped = []
    for x, p in zip(xs, like):
        if is_dtensor(p):
            from torch.distributed.tensor import DTensor

            x = DTensor.from_local(x, p.device_mesh, p.placements, run_check=False,
                                   shape=p.shape, stride=p.stride())
        wrapped.append(x)
    return [s.reshape(()) for s in statistics([Request(x, kind, rows=False) for x in wrapped])]


def _moments_(
    ms: list[Tensor], vs: list[Tensor], m_in: list[Tensor], grads: list[Tensor],
    beta1: Any, beta2: Any, foreach: bool,
) -> None:
    if foreach:
        torch._foreach_lerp_(ms, m_in, 1 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, torch._foreach_mul(grads, 1 - beta2), grads, 1.0)
        return
    for m, v, x, g in zip(ms, vs, m_in, grads):
        m.lerp_(x, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g * (1 - beta2))


def rules_adamhd(
    tensors: AdamTensors,
    hyper: AdamStep,
    rule_states: list[dict[str, Tensor]],
    foreach: bool,
) -> None:
    """One step of ``tensors.params`` with ``hyper.update``; ``rule_states``: per parameter, the
    optimizer state holding ``adanorm_e``/``prev_grad`` where the rule needs them."""
    params, grads, state_steps = tensors.params, tensors.grads, tensors.state_steps
    rule, decay = hyper.update, hyper.decay
    beta1, beta2 = _to_scalar(hyper.beta1), _to_scalar(hyper.beta2)
    lr = _to_scalar(hyper.lr)
    tau = decay_strength(lr, hyper.weight_decay)
    ps = [local(p) for p in params]
    gs = [local(-g if hyper.maximize else g) for g in grads]
    ms, vs = [local(m) for m in tensors.exp_avgs], [local(v) for v in tensors.exp_avg_sqs]
    for s in state_steps:
        s += 1
    if hyper.decays:
        abs_means = whole_mean_abs(params) if decay.adaptive else None
        ds = decay.thresholds(ps, tensors.delta_mus, foreach=False, abs_means=abs_means)

    m_in = gs
    if rule.adanorm:
        norms = _whole("norm", gs, params)
        scales = [R.adanorm_scale_(st["adanorm_e"], n) for st, n in zip(rule_states, norms)]
        m_in = [g * s.to(g.dtype) for g, s in zip(gs, scales)]
    _moments_(ms, vs, m_in, gs, beta1, beta2, foreach)
    seconds = vs
    if hyper.amsgrad:
        seconds = [local(x) for x in tensors.max_exp_avg_sqs]
        for mx, v in zip(seconds, vs):
            torch.maximum(mx, v, out=mx)

    us = []
    for i, (m, second, g) in enumerate(zip(ms, seconds, gs)):
        step = state_steps[i] if hyper.capturable else _get_value(state_steps[i])
        m_hat = m / (1 - beta1**step)
        if rule.diffgrad:
            prev = local(rule_states[i]["prev_grad"])
            m_hat = m_hat * R.diffgrad_factor(prev, g)
            prev.copy_(g)
        us.append(R.direction(m_hat, second.sqrt() / (1 - beta2**step) ** 0.5, hyper.eps, rule))
    if rule.cautious:
        masks = [R.agreement_mask(u, g) for u, g in zip(us, gs)]
        for u, mask, kept in zip(us, masks, _whole("mean", masks, params)):
            R.cautious_(u, mask, kept)
    if rule.trust_ratio:
        norms = _whole("norm", ps + us, params + params)
        for u, p_norm, u_norm in zip(us, norms[: len(us)], norms[len(us):]):
            u.mul_(R.trust_ratio(p_norm, u_norm).to(u.dtype))

    # the explicit decay acts on p_t just before p -= lr*u (u does not depend on p, and the trust
    # ratio above read ||p_t||); cautious decay masks it with the final u
    decay_masks = decay.masks(us, ps, foreach=False) if hyper.decays else None
    if hyper.decays and decay.before_update:
        decay.apply_(ps, tau, ds, foreach=False, masks=decay_masks)
    for p, u in zip(ps, us):
        if isinstance(lr, Tensor):
            p.sub_(u.mul_(lr.to(u.dtype)))
        else:
            p.add_(u, alpha=-lr)
    if hyper.decays and not decay.before_update:
        decay.apply_(ps, tau, ds, foreach=False, masks=decay_masks)
