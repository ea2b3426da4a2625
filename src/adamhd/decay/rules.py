"""Decoupled decay rules: the one place where each rule's math lives.

A rule pulls the weights toward zero once per step, apart from the optimizer's update ``u``
(decoupled, as in AdamW; ``p_new = p - lr*u``). ``tau`` is the step's strength
(``adamhd.decay.strength``: ``lr*weight_decay`` by default).

* ``L2Decay`` (AdamW, arXiv 1711.05101)::

      explicit:  p <- p * (1 - tau)                 on p_t, before the update
      proximal:  p <- q / (1 + tau)                 on q = p_t - lr*u, after it

* ``HuberDecay`` (arXiv 2511.14721), penalty ``H_d(x) = x**2/2`` if ``|x| <= d`` else
  ``d*|x| - d**2/2``, gradient ``clip(x, -d, d)``::

      explicit:  p <- p - tau * clip(p, -d, d)
      proximal:  p <- q - tau/(1 + tau) * clip(q, -(1 + tau)*d, (1 + tau)*d)

  The proximal form is the exact ``argmin_z 0.5*(z - q)**2 + tau*H_d(z)``: ``q/(1 + tau)`` where
  ``|q| <= (1 + tau)*d`` and ``q - tau*d*sign(q)`` elsewhere. ``d = inf`` is L2 in both forms, and
  the explicit one is written ``p*(1 - tau)``: bit for bit AdamW's decay. The threshold ``d`` is a
  fixed number or adaptive (``adamhd.decay.threshold``).

* ``cautious=True`` (arXiv 2510.12402, Algorithm 1): decay only the coordinates where
  ``u * p_t >= 0`` (the update moves ``p`` toward zero, or not at all), for both forms; the mask is
  taken on ``p_t``, the weights before the step. ``>=`` as in the paper: a coordinate whose update
  is exactly 0 (a dead unit, a frozen coordinate) still decays, as it would without the mask;
  a strict ``>`` (used by some code) would exempt it from decay forever. The mask costs one
  weight-sized temporary while the decay is applied.

Every formula has a per-tensor form (the readable definition) and a ``foreach`` form over a list of
tensors (the same formula with ``torch._foreach_*`` ops). Fused kernels reimplement the same
formulas and are tested against these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from adamhd.decay.threshold import (
    for_autograd,
    foreach_mean_abs,
    foreach_update_adaptive_threshold,
    mean_abs,
    update_adaptive_threshold,
)

Threshold = float | Tensor  # a Python float or a 0-dim tensor (adaptive threshold)
Form = Literal["explicit", "proximal"]

DECAY_FORMS = ("explicit", "proximal")

__all__ = [
    "DECAY_FORMS",
    "DecayRule",
    "HuberDecay",
    "L2Decay",
    "Threshold",
    "cautious_mask",
    "clip",
    "foreach_cautious_mask",
    "foreach_clip",
    "foreach_huber_explicit_",
    "foreach_huber_proximal_",
    "huber_explicit_",
    "huber_proximal_",
]


# ---------------------------------------------------------------------------------------------
# The formulas
# ---------------------------------------------------------------------------------------------


def clip(x: Tensor, d: Threshold, scale: float | Tensor = 1.0) -> Tensor:
    """``clip(x, -scale*d, scale*d)``: the gradient of ``scale*d``-Huber, the decay's pull."""
    bound = d.to(x.dtype) * scale if isinstance(d, Tensor) else d * scale
    return torch.clamp(for_autograd(x), min=-bound, max=bound)


def cautious_mask(u: Tensor, p: Tensor) -> Tensor:
    """``u * p >= 0`` as a boolean tensor, computed as ``sign(u) * p >= 0``: exact, where the
    product ``u * p`` of two tiny numbers of opposite sign underflows to ``-0.0``, which
    ``>= 0`` would wrongly accept."""
    with torch.no_grad():
        return torch.sign(u).mul_(p) >= 0


def huber_explicit_(
    p: Tensor, tau: float | Tensor, d: Threshold, mask: Tensor | None = None
) -> None:
    """``p <- p - tau*[mask]*clip(p, -d, d)`` in place (the paper's explicit step).

    ``d = inf`` without a mask is the L2 limit and is written as AdamW writes it, ``p*(1 - tau)``.
    """
    if mask is None and _is_inf(d):
        p.mul_(1 - tau)
        return
    _add_scaled_(p, _pull(p, d, 1.0, mask), -tau)


def huber_proximal_(
    q: Tensor, tau: float | Tensor, d: Threshold, mask: Tensor | None = None
) -> None:
    """``q <- prox_{tau*H_d}(q)`` in place where ``mask`` (everywhere without one)."""
    _add_scaled_(q, _pull(q, d, 1 + tau, mask), -tau / (1 + tau))


def foreach_cautious_mask(us: list[Tensor], ps: list[Tensor]) -> list[Tensor]:
    """``u * p >= 0`` for each pair, as 0/1 tensors of ``p``'s dtype (see ``cautious_mask``)."""
    signs = torch._foreach_sign(us)
    torch._foreach_mul_(signs, ps)  # sign(u)*p: exact (a product with -1, 0 or 1)
    torch._foreach_sign_(signs)  # sign(u)*sign(p): -1, 0 or 1
    torch._foreach_add_(signs, 1.0)
    torch._foreach_clamp_max_(signs, 1.0)  # -1 -> 0; 0, 1 -> 1
    return signs


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


def foreach_huber_explicit_(
    ps: list[Tensor], tau: float, ds: list[Threshold], masks: list[Tensor] | None = None
) -> None:
    if masks is None and all(_is_inf(d) for d in ds):
        torch._foreach_mul_(ps, 1 - tau)
        return
    torch._foreach_add_(ps, _foreach_pull(ps, ds, 1.0, masks), alpha=-tau)


def foreach_huber_proximal_(
    qs: list[Tensor], tau: float, ds: list[Threshold], masks: list[Tensor] | None = None
) -> None:
    torch._foreach_add_(qs, _foreach_pull(qs, ds, 1 + tau, masks), alpha=-tau / (1 + tau))


def _pull(x: Tensor, d: Threshold, scale: float | Tensor, mask: Tensor | None) -> Tensor:
    """``[mask *] clip(x, -scale*d, scale*d)`` (``[mask *] x`` for ``d = inf``: one pass)."""
    if mask is None:
        return clip(x, d, scale)
    return for_autograd(x) * mask if _is_inf(d) else clip(x, d, scale).mul_(mask)


def _foreach_pull(
    xs: list[Tensor], ds: list[Threshold], scale: float, masks: list[Tensor] | None
) -> list[Tensor]:
    """``_pull`` for each tensor of ``xs``."""
    if masks is None:
        return foreach_clip(xs, ds, scale)
    if all(_is_inf(d) for d in ds):
        return torch._foreach_mul(xs, masks)
    pulls = foreach_clip(xs, ds, scale)
    torch._foreach_mul_(pulls, masks)
    return pulls


def _add_scaled_(x: Tensor, y: Tensor, alpha: float | Tensor) -> None:
    """``x += alpha*y`` in one pass (``alpha`` as a tensor, with capturable, costs one more)."""
    if isinstance(alpha, Tensor):
        x.add_(y * alpha)
    else:
        x.add_(y, alpha=alpha)


def _is_inf(d: Threshold) -> bool:
    return not isinstance(d, Tensor) and math.isinf(d)


# ---------------------------------------------------------------------------------------------
# The records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DecayRule:
    """What every rule record has: its form, whether it is cautious, and how it is applied.

    Subclasses define the threshold (``delta``: ``math.inf`` for L2); fused kernels read
    ``adaptive``, ``delta``, ``delta_scale``, ``delta_beta`` and ``form``.
    """

    form: Form = "explicit"
    cautious: bool = False

    name: ClassVar[str] = ""
    delta: ClassVar[float | str] = math.inf
    delta_scale: ClassVar[float] = 1.0
    delta_beta: ClassVar[float] = 0.0

    @property
    def adaptive(self) -> bool:
        return self.delta == "adaptive"

    @property
    def before_update(self) -> bool:
        """Explicit decay acts on ``p_t`` before the update, proximal decay after it."""
        return self.form == "explicit"

    def thresholds(
        self,
        params: list[Tensor],
        mus: list[Tensor],
        foreach: bool,
        abs_means: list[Tensor] | None = None,
    ) -> list[Threshold]:
        """This step's ``d_t`` per tensor; advances the adaptive EMA. Call before ``p`` changes.

        ``abs_means``: this step's whole-tensor ``mean|p|`` if already computed; by default the
        local tensor's. Sharded (DTensor) parameters must pass
        ``adamhd.distributed.whole_mean_abs(params)``.
        """
        if not self.adaptive:
            return [float(self.delta)] * len(params)
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
        self,
        params: list[Tensor],
        tau: float | Tensor,
        ds: list[Threshold],
        foreach: bool,
        masks: list[Tensor] | None = None,
    ) -> None:
        """Apply the rule to ``params`` in place with strength ``tau`` and thresholds ``ds``.

        ``masks``: the cautious masks (``cautious_mask(u, p_t)``), or ``None`` to decay every
        coordinate.
        """
        if not params:
            return
        if foreach and not isinstance(tau, Tensor):
            step_foreach = (
                foreach_huber_explicit_ if self.before_update else foreach_huber_proximal_
            )
            step_foreach(params, tau, ds, masks)
            return
        step = huber_explicit_ if self.before_update else huber_proximal_
        for i, (p, d) in enumerate(zip(params, ds)):
            step(p, tau, d, None if masks is None else masks[i])

    def masks(self, us: list[Tensor], params: list[Tensor], foreach: bool) -> list[Tensor] | None:
        """The cautious masks for updates ``us`` and weights ``params`` (``None`` if not
        cautious). ``us`` may be anything with the sign of the update (Adam: ``exp_avg``)."""
        if not self.cautious:
            return None
        if foreach:
            return foreach_cautious_mask(us, params)
        return [cautious_mask(u, p) for u, p in zip(us, params)]


@dataclass(frozen=True, kw_only=True)
class L2Decay(DecayRule):
    """AdamW's decoupled L2 decay, ``p*(1 - tau)`` (``q/(1 + tau)`` in the proximal form).

    It is ``HuberDecay`` with ``delta=math.inf`` (same code, same bits)."""

    name: ClassVar[str] = "l2"


@dataclass(frozen=True, kw_only=True)
class HuberDecay(DecayRule):
    """Decoupled Huber decay with a fixed or adaptive threshold: the rule AdamHD applies.

    ``delta``: a positive float (``math.inf`` gives AdamW's L2 decay) or ``"adaptive"``
    (``d_t = delta_scale * mu_t``, ``mu_t`` an EMA with ``delta_beta`` of ``mean|p_t|``).
    """

    name: ClassVar[str] = "huber"
    delta: float | str = "adaptive"  # type: ignore[misc]
    delta_scale: float = 1.5  # type: ignore[misc]
    delta_beta: float = 0.99  # type: ignore[misc]
