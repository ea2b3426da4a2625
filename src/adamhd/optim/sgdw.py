"""``SGDW``: SGD with momentum and decoupled weight decay, Algorithm 1 of arXiv 1711.05101.

Loshchilov & Hutter's SGDW, in torch terms (``alpha`` = the lr at construction, or the group's
``initial_lr`` once a scheduler set it; ``eta_t = lr_t / alpha`` the schedule multiplier)::

    m_t = beta1*m_{t-1} + eta_t*alpha*g_t        (= beta1*m_{t-1} + lr_t*g_t)
    x_t = x_{t-1} - m_t - eta_t*lambda*x_{t-1}

The momentum buffer holds lr-scaled gradients, so a changed lr acts on new gradients only, and the
decay follows the schedule multiplier ``eta_t``, not the step size ``lr_t``
(``decay_scaling="schedule"``, the default here). ``torch.optim.SGD`` differs on both counts: its
buffer holds raw gradients (``lr_t`` multiplies the whole buffer) and its ``weight_decay`` is L2
added to the gradient. With a constant lr, ``dampening=0`` and no decay the two agree (up to
rounding: ``lr*(beta1*b + g)`` versus ``beta1*(lr*b) + lr*g``).

``SGDW`` is ``with_decoupled_decay(MomentumSGD)``: the decay is the shared rule of
``adamhd.decay`` (``decay="l2"`` by default here, ``decay="huber"`` for SGD with Huber decay,
``cautious_decay=True`` for the cautious form). Nesterov momentum is not offered: Algorithm 1 has
none, and its lr-scaled buffer has no single accepted Nesterov form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from adamhd.decay.wrapper import with_decoupled_decay
from adamhd.state import CheckedState, Entry

__all__ = ["SGDW", "MomentumSGD"]


class MomentumSGD(CheckedState, Optimizer):
    """The update of SGDW's Algorithm 1 without decay: ``m = momentum*m + lr*g;  p -= m``.

    ``momentum=0`` keeps no buffer (``p -= lr*g``). ``maximize`` ascends. ``foreach`` picks the
    multi-tensor implementation (default: on when every tensor is on an accelerator); both paths
    run the same ops, so they agree bit for bit. Loads are checked (``adamhd.state``): the
    buffer has the parameter's shape (a missing one starts at zero).
    """

    state_spec = {"momentum_buffer": Entry()}

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        momentum: float = 0.9,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        if isinstance(lr, Tensor) or not 0.0 <= lr < float("inf"):
            raise ValueError(f"Invalid learning rate: lr={lr} (a finite float >= 0)")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum: momentum={momentum} (need 0 <= momentum < 1)")
        defaults = dict(lr=lr, momentum=momentum, maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        self.check_state_once()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [-p.grad if group["maximize"] else p.grad for p in params]
            lr, momentum = group["lr"], group["momentum"]
            foreach = group["foreach"]
            if foreach is None:
                foreach = all(not p.is_cpu for p in params)
            if momentum == 0.0:
                _sgd_step(params, grads, lr, foreach)
                continue
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            _momentum_step(params, grads, bufs, lr, momentum, foreach)
        return loss


def _sgd_step(params: list[Tensor], grads: list[Tensor], lr: float, foreach: bool) -> None:
    if foreach:
        torch._foreach_add_(params, grads, alpha=-lr)
    else:
        for p, g in zip(params, grads):
            p.add_(g, alpha=-lr)


def _momentum_step(
    params: list[Tensor], grads: list[Tensor], bufs: list[Tensor], lr: float, beta: float,
    foreach: bool,
) -> None:
    """``m = beta*m + lr*g;  p -= m``."""
    if foreach:
        torch._foreach_mul_(bufs, beta)
        torch._foreach_add_(bufs, grads, alpha=lr)
        torch._foreach_sub_(params, bufs)
        return
    for p, g, m in zip(params, grads, bufs):
        m.mul_(beta).add_(g, alpha=lr)
        p.sub_(m)


class SGDW(with_decoupled_decay(MomentumSGD)):  # type: ignore[misc]
    """SGD with momentum and decoupled decay: Algorithm 1 of arXiv 1711.05101 (see the module).

    Args:
        params, lr, momentum, maximize, foreach: as ``MomentumSGD`` (``momentum`` is the paper's
            ``beta1``, default 0.9; lr default 1e-3 as ``torch.optim.SGD``).
        weight_decay: the paper's ``lambda`` (default 0, as ``torch.optim.SGD``). With the default
            ``decay_scaling="schedule"`` the step's decay is ``(lr_t/initial_lr)*lambda``: to match
            ``torch.optim.SGD(weight_decay=w)`` at lr ``a`` take ``lambda = a*w``.
        decay: ``"l2"`` (default: SGDW) or ``"huber"``; ``delta``, ``delta_scale``,
            ``delta_beta``, ``decay_form``, ``cautious_decay``: as ``with_decoupled_decay``.
        decay_scaling: ``"schedule"`` (default, the paper's ``eta_t*lambda``) or ``"lr"``.
    """

    _decay_overrides = dict(weight_decay=0.0, decay="l2", decay_scaling="schedule")
