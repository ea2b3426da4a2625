r"""``AdaLo``: a step size driven by the training loss instead of a second moment.

Per parameter tensor, given the step's loss ``L`` (from ``closure`` or ``step(loss=...)``)::

    m   = lerp(m, g, 1 - beta1)
    l   = (tanh(-log1p(L)/2) + 1) / 2              in (0, 1/2] for L >= 0; 1/2 at L = 0
    E   = lerp(E, l, 1 - beta2)                    E_0 = 0, no bias correction
    lr_t = lr * max(E/kappa, eps)          mode="adversarial" (default): small loss, big step
    lr_t = lr * max((1 - E)/kappa, eps)    mode="compliant": big loss, big step
    p   = p * (1 - lr_t*weight_decay)
    p   = p - lr_t * m

Defaults (the sketch's): ``betas=(0.9, 0.999), weight_decay=1e-2, kappa=3, eps=1e-8``. Source: the
seed's AdaLo sketch after Information Sciences 690:121607 (2024); the paper publishes no code.

Differences from the sketch: ``lr`` (default 1.0) multiplies the loss-driven step, so schedulers
work; the sketch ignores ``lr`` (its default 1e-8 is unused), which ``lr=1`` reproduces exactly. A
step without a loss raises (the sketch silently reused the stale ``E``). ``E`` is a float32 0-dim
state per tensor (float64 for float64 weights), kept in that precision across ``load_state_dict``.

Decay: ``weight_decay`` is the sketch's own decoupled L2 scaled by the loss-driven ``lr_t``
(``tau = lr_t*weight_decay``); the decay keys of ``adamhd.decay.native`` (``decay="huber"``,
``decay_form``, ``cautious_decay`` with the sign of ``m``, ``decay_scaling="schedule"``: ``tau =
lr_t*weight_decay/initial_lr``) choose another rule at the same strength.
``adamhd.with_decoupled_decay(AdaLo)`` sets it to 0 and applies its rule with ``tau = lr *
weight_decay`` from the group's ``lr`` (the multiplier above), not ``lr_t``: choose its
``weight_decay`` for that scale.

GradScaler: ``AdaLo`` unscales and skips (found inf) itself, so::

    scaler.scale(loss).backward(); scaler.step(opt, loss=loss); scaler.update()   # no closure
    opt.step(closure, scaler=scaler); scaler.update()                             # closure

where the closure calls ``scaler.scale(loss).backward()`` and returns ``loss``. ``GradScaler.step``
checks the gradients for inf before it calls the optimizer, that is before a closure has made them,
so ``scaler.step(opt, closure)`` raises with this advice. A skipped step changes nothing (weights,
``m``, ``E``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from adamhd.decay.native import StepDecay, decayed_update_
from adamhd.optim._base import (
    CheckedOptimizer,
    Params,
    beta_pair,
    finite_nonneg,
    lr_value,
    one_of,
    positive,
    stat_dtype,
    zero_moment,
)

__all__ = ["MODES", "AdaLo", "AdaLoHyper", "adalo", "loss_level"]

MODES = ("adversarial", "compliant")


@dataclass(frozen=True)
class AdaLoHyper:
    lr: float
    beta1: float
    beta2: float
    kappa: float
    eps: float
    mode: str
    level: Tensor  # loss_level(loss) of this step
    step_decay: StepDecay | None = None


def loss_level(loss: Tensor) -> Tensor:
    """``(tanh(-log1p(L)/2) + 1)/2``: 1/2 at L = 0, falling to 0 as L grows."""
    return (torch.tanh(-torch.log1p(loss) * 0.5) + 1.0) * 0.5


def adalo(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Tensor]],
    h: AdaLoHyper,
) -> None:
    """One AdaLo step over lists of tensors (state ``exp_avg``, ``loss_ema``)."""
    for p, g, state in zip(params, grads, states):
        m, ema = state["exp_avg"], state["loss_ema"]
        m.lerp_(g, 1.0 - h.beta1)
        ema.lerp_(h.level.to(ema), 1.0 - h.beta2)
        size = ema if h.mode == "adversarial" else 1.0 - ema
        lr_t = (size / h.kappa).clamp_min(h.eps) * h.lr
        decayed_update_(h.step_decay, [p], [state], lr_t, partial(p.sub_, m * lr_t), signs=[m],
                        foreach=False)


class AdaLo(CheckedOptimizer):
    """Loss-driven step size; see the module docstring for the formula and GradScaler use.

    Args:
        params: parameters or parameter groups.
        lr: multiplier of the loss-driven step (float or 1-element tensor). Default 1.0.
        betas: ``(beta1, beta2)``: momentum and loss-EMA coefficients. Default (0.9, 0.999).
        weight_decay: decoupled decay scaled by ``lr_t`` (default L2). Default 1e-2.
        kappa: divides the loss level. Default 3.0.
        eps: smallest ``lr_t / lr``. Default 1e-8.
        mode: ``"adversarial"`` (default) or ``"compliant"``.
        maximize: ascend instead of descend.
        **decay: the decay keys of ``adamhd.decay.native`` (``decay="l2"`` by default).
    """

    name = "AdaLo"
    native_decay = True
    stat_keys = ("loss_ema",)
    _step_supports_amp_scaling = True  # unscales and skips inf steps itself (see module doc)
    _step_requires_loss = True  # with_decoupled_decay(AdaLo) checks this before it decays
    checks = {"betas": beta_pair, "kappa": positive, "eps": finite_nonneg, "mode": one_of(MODES)}

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 1e-2,
        kappa: float = 3.0,
        eps: float = 1e-8,
        mode: str = "adversarial",
        *,
        maximize: bool = False,
        **decay: Any,
    ) -> None:
        super().__init__(params, locals())

    @torch.no_grad()
    def step(
        self,
        closure: Callable[[], Any] | None = None,
        *,
        loss: Tensor | float | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> Any:
        """One step. The loss comes from ``closure()`` or ``loss``; with ``scaler`` (closure
        only), the closure's scaled backward is unscaled and checked after it ran."""
        from_scaler = hasattr(self, "found_inf")  # GradScaler.step set grad_scale/found_inf
        if closure is not None:
            if from_scaler:
                raise RuntimeError(
                    "GradScaler.step(AdaLo, closure) checks gradients before the closure makes "
                    "them; call opt.step(closure, scaler=scaler) and then scaler.update()"
                )
            with torch.enable_grad():
                loss = closure()
            if scaler is not None:
                return scaler.step(self, loss=loss)
        elif scaler is not None:
            raise ValueError("scaler= is for the closure case; otherwise use scaler.step(opt)")
        if from_scaler and bool(self.found_inf):
            return loss  # GradScaler found inf/NaN: skip, changing nothing
        if loss is None:
            raise ValueError("AdaLo needs the loss: call step(closure) or step(loss=loss)")
        if not isinstance(loss, Tensor):
            loss = torch.tensor(float(loss), dtype=torch.float64)
        self.step_groups(level=loss_level(loss.detach().to(torch.float64)))
        return loss

    def new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {"exp_avg": zero_moment(p),
                "loss_ema": torch.zeros((), dtype=stat_dtype(p), device=p.device)}

    def group_grads(self, group: dict[str, Any], params: list[Tensor]) -> list[Tensor]:
        """The gradients, unscaled when ``GradScaler.step`` called this step."""
        grads = [p.grad for p in params]
        grad_scale = getattr(self, "grad_scale", None) if hasattr(self, "found_inf") else None
        if grad_scale is not None:
            grads = [g / grad_scale.to(g.device) for g in grads]
        return [-g for g in grads] if group["maximize"] else grads

    def group_hyper(self, group: dict[str, Any], **step_values: Any) -> AdaLoHyper:
        beta1, beta2 = group["betas"]
        return AdaLoHyper(lr=lr_value(group["lr"]), beta1=beta1, beta2=beta2,
                          kappa=group["kappa"], eps=group["eps"], mode=group["mode"],
                          level=step_values["level"], step_decay=StepDecay.from_group(group))

    def group_step(self, params: list[Tensor], grads: list[Tensor],
                   states: list[dict[str, Tensor]], hyper: AdaLoHyper) -> None:
        adalo(params, grads, states, hyper)
