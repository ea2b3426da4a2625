"""Decoupled decay rules: the one place where AdamHD's regulariser is defined.

A decay rule pulls the weights toward zero once per step, apart from the gradient update (decoupled,
as in AdamW). ``tau = lr * weight_decay`` is the step's decay strength.

Huber penalty, per element: ``H_d(x) = x**2/2`` if ``|x| <= d`` else ``d*|x| - d**2/2``.
Its gradient is ``clip(x, -d, d)``: an L2 pull on small weights, a constant pull of size ``d`` on
large ones.

* ``form="explicit"`` (the paper's equation), applied to ``p`` *before* the Adam update::

      p <- p - tau * clip(p, -d, d)

* ``form="proximal"`` (the paper's closed form), applied to ``q`` *after* the Adam update. It is
  the exact minimiser of ``0.5*(z - q)**2 + tau*H_d(z)``::

      p <- q / (1 + tau)              if |q| <= (1 + tau) * d
           q - tau * d * sign(q)      otherwise

Both are computed below as a pull toward zero: ``p - tau*clip(p, -d, d)`` for the explicit form and
``q - tau/(1 + tau)*clip(q, -(1 + tau)*d, (1 + tau)*d)`` for the proximal one (the same piecewise
map). With ``d = inf`` the explicit form is written ``p*(1 - tau)``, bit for bit AdamW's decay.

The threshold ``d`` is a fixed number, or ``"adaptive"`` (the paper's per-tensor threshold)::

      a_t  = mean(|p_t|) over the whole tensor, before step t changes it
      mu_1 = a_1;   mu_t = beta*mu_{t-1} + (1 - beta)*a_t
      d_t  = scale * mu_t

Every function here has a per-tensor form (the readable definition) and a ``foreach`` form over a
list of tensors (the same formula with ``torch._foreach_*`` ops, for speed). Fused kernels
reimplement the same formulas and are tested against these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from adamhd import distributed

Threshold = float | Tensor  # a Python float or a 0-dim tensor (adaptive threshold)

DECAY_FORMS = ("explicit", "proximal")


# ---------------------------------------------------------------------------------------------
# Threshold: the adaptive per-tensor delta_t
# ---------------------------------------------------------------------------------------------


def mu_dtype(p: Tensor) -> torch.dtype:
    """The dtype the threshold statistics are kept in: float64 for float64 weights, else float32."""
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def mean_abs(p: Tensor) -> Tensor:
    """``mean(|p|)`` of the whole tensor as a 0-dim tensor (0 for an empty tensor)."""
    if p.numel() == 0:
        return torch.zeros((), dtype=mu_dtype(p), device=p.device)
    # torch's mean sums in cascade (accurate to ~1e-8 on millions of float32 elements), unlike
    # its CPU L1 norm, which drifts ~1e-4; it also measured faster than a float64 norm on CPU.
    return _for_autograd(p).abs().mean(dtype=mu_dtype(p))


def foreach_mean_abs(params: list[Tensor]) -> list[Tensor]:
    """``mean(|p|)`` for each tensor: one multi-tensor L1-norm kernel on accelerators; per tensor
    on CPU, where that kernel sums sequentially (~1e-4 relative drift over millions of elements)."""
    if params[0].is_cpu:
        return [mean_abs(p.detach()) for p in params]
    sums = torch._foreach_norm([p.detach() for p in params], 1, dtype=mu_dtype(params[0]))
    return torch._foreach_div(sums, [float(max(p.numel(), 1)) for p in params])


def whole_mean_abs(params: list[Tensor], foreach: bool = False) -> list[Tensor]:
    """``mean(|p|)`` of each *whole* tensor: sharded DTensor parameters (FSDP2) are summed across
    ranks with one all-reduce for all of them (``adamhd.distributed``)."""
    if not params:
        return []
    if distributed.any_dtensor(params):
        return distributed.global_mean_abs(params)
    return foreach_mean_abs(params) if foreach else [mean_abs(p) for p in params]


def update_adaptive_threshold(
    mu: Tensor, abs_mean: Tensor, beta: float, scale: float
) -> Tensor:
    """Update the EMA ``mu`` in place with this step's ``mean|p|``; return ``d_t = scale * mu``.

    ``mu`` is created equal to ``a_1`` (see ``AdamHD``), so the first update leaves it at ``a_1``
    exactly (``lerp`` with equal ends returns that end).
    """
    mu.lerp_(abs_mean, 1.0 - beta)
    return mu * scale


def foreach_update_adaptive_threshold(
    mus: list[Tensor], abs_means: list[Tensor], beta: float, scale: float
) -> list[Tensor]:
    torch._foreach_lerp_(mus, abs_means, 1.0 - beta)
    return torch._foreach_mul(mus, scale)


# ---------------------------------------------------------------------------------------------
# Decay rules
# ---------------------------------------------------------------------------------------------


def _for_autograd(x: Tensor) -> Tensor:
    """``x``, or a copy of it when autograd records (``differentiable=True``).

    The decay updates ``x`` in place right after reading it; the ops that read it (``abs``,
    ``clamp``) keep their input for the backward pass, so they must see a copy.
    """
    return x.clone() if torch.is_grad_enabled() and x.requires_grad else x


def clip(x: Tensor, d: Threshold, scale: float | Tensor = 1.0) -> Tensor:
    """``clip(x, -scale*d, scale*d)``: the gradient of ``scale*d``-Huber, the decay's pull."""
    bound = d.to(x.dtype) * scale if isinstance(d, Tensor) else d * scale
    return torch.clamp(_for_autograd(x), min=-bound, max=bound)


def huber_explicit_(p: Tensor, tau: float | Tensor, d: Threshold) -> None:
    """``p <- p - tau*clip(p, -d, d)`` in place (the paper's explicit step).

    ``d = inf`` is the L2 limit and is written as AdamW writes it, ``p*(1 - tau)``, so that it is
    bit for bit AdamW.
    """
    if _is_inf(d):
        p.mul_(1 - tau)
    else:
        _add_scaled_(p, clip(p, d), -tau)


def huber_proximal_(q: Tensor, tau: float | Tensor, d: Threshold) -> None:
    """``q <- prox_{tau*H_d}(q)`` in place (the paper's closed-form step), written as a pull::

        q - tau/(1 + tau) * clip(q, -(1 + tau)*d, (1 + tau)*d)

    which is ``q/(1 + tau)`` where ``|q| <= (1 + tau)*d`` and ``q - tau*d*sign(q)`` elsewhere.
    """
    _add_scaled_(q, clip(q, d, 1 + tau), -tau / (1 + tau))


def foreach_clip(xs: list[Tensor], ds: list[Threshold], scale: float = 1.0) -> list[Tensor]:
    """``clip(x, -scale*d, scale*d)`` for each tensor of ``xs``."""
    if isinstance(ds[0], Tensor):
        bounds = torch._foreach_mul([d.to(x.dtype) for d, x in zip(ds, xs)], scale)
        clipped = torch._foreach_maximum(xs, torch._foreach_neg(bounds))
        torch._foreach_minimum_(clipped, bounds)
    else:
        bounds_f = [scale * float(d) for d in ds]
        clipped = torch._foreach_clamp_min(xs, [-b for b in bounds_f])
        torch._foreach_clamp_max_(clipped, bounds_f)
    return clipped


def foreach_huber_explicit_(ps: list[Tensor], tau: float, ds: list[Threshold]) -> None:
    if all(_is_inf(d) for d in ds):
        torch._foreach_mul_(ps, 1 - tau)
    else:
        torch._foreach_add_(ps, foreach_clip(ps, ds), alpha=-tau)


def foreach_huber_proximal_(qs: list[Tensor], tau: float, ds: list[Threshold]) -> None:
    torch._foreach_add_(qs, foreach_clip(qs, ds, 1 + tau), alpha=-tau / (1 + tau))


def _add_scaled_(x: Tensor, y: Tensor, alpha: float | Tensor) -> None:
    """``x += alpha*y`` in one pass (``alpha`` as a tensor, with capturable, costs one more)."""
    if isinstance(alpha, Tensor):
        x.add_(y * alpha)
    else:
        x.add_(y, alpha=alpha)


def _is_inf(d: Threshold) -> bool:
    return not isinstance(d, Tensor) and math.isinf(d)


@dataclass(frozen=True)
class HuberDecay:
    """Decoupled Huber decay with a fixed or adaptive threshold: the rule AdamHD applies.

    ``delta``: a positive float (``math.inf`` gives AdamW's L2 decay) or ``"adaptive"``.
    """

    delta: float | Literal["adaptive"] = "adaptive"
    delta_scale: float = 1.5
    delta_beta: float = 0.99
    form: Literal["explicit", "proximal"] = "explicit"

    @property
    def adaptive(self) -> bool:
        return self.delta == "adaptive"

    @property
    def before_update(self) -> bool:
        """Explicit decay acts on ``p_t`` before the Adam update, proximal decay after it."""
        return self.form == "explicit"

    def thresholds(
        self,
        params: list[Tensor],
        mus: list[Tensor],
        foreach: bool,
        abs_means: list[Tensor] | None = None,
    ) -> list[Threshold]:
        """This step's ``d_t`` per tensor; advances the adaptive EMA. Call before ``p`` changes.

        ``abs_means``: this step's whole-tensor ``mean|p|`` if already computed (see
        ``whole_mean_abs``); by default computed here.
        """
        if not self.adaptive:
            return [float(self.delta)] * len(params)
        if abs_means is None and distributed.any_dtensor(params):
            abs_means = distributed.global_mean_abs(params)
        if foreach:
            return foreach_update_adaptive_threshold(
                mus,
                foreach_mean_abs(params) if abs_means is None else abs_means,
                self.delta_beta,
                self.delta_scale,
            )
        if abs_means is None:
            abs_means = [mean_abs(p) for p in params]
        return [
            update_adaptive_threshold(mu, a, self.delta_beta, self.delta_scale)
            for a, mu in zip(abs_means, mus)
        ]

    def apply_(
        self, params: list[Tensor], tau: float | Tensor, ds: list[Threshold], foreach: bool
    ) -> None:
        """Apply the decay to ``params`` in place with strength ``tau`` and thresholds ``ds``."""
        if not params:
            return
        if foreach and not isinstance(tau, Tensor):
            if self.form == "explicit":
                foreach_huber_explicit_(params, tau, ds)
            else:
                foreach_huber_proximal_(params, tau, ds)
            return
        step = huber_explicit_ if self.form == "explicit" else huber_proximal_
        for p, d in zip(params, ds):
            step(p, tau, d)
