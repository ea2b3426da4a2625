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
  a strict ``>`` (used by some code) would exempt it from decay forever.

Every formula has a per-tensor form (the readable definition) and a ``foreach`` form over a list of
tensors (the same formula with ``torch._foreach_*`` ops). Fused kernels reimplement the same
formulas and are tested against these. On large contiguous CPU tensors the per-tensor form runs
chunk by chunk (``adamhd.decay.chunks``): the same formula, its temporaries (the pull, the mask)
a chunk long and in cache instead of weight-sized; the explicit cautious form then builds its mask
in the same sweep (``signs=``). Same bits as on the whole tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from adamhd.decay.chunks import splits, sweep
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


def is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def check_threshold(delta: object, delta_scale: object, delta_beta: object) -> None:
    """``ValueError`` naming the first invalid threshold value: ``delta`` a float > 0
    (``math.inf`` allowed) or ``"adaptive"``, ``delta_scale`` finite and > 0, ``delta_beta`` in
    [0, 1). The one check of these values, for param groups and rule records alike."""
    if isinstance(delta, str):
        if delta != "adaptive":
            raise ValueError(f"Invalid delta: {delta!r} (a positive float or 'adaptive')")
    elif not is_number(delta) or not delta > 0.0:  # type: ignore[operator]
        raise ValueError(
            f"Invalid delta: delta={delta!r} (a positive float, math.inf, or 'adaptive')"
        )
    if not is_number(delta_scale) or not 0.0 < delta_scale < math.inf:  # type: ignore[operator]
        raise ValueError(f"Invalid delta_scale: delta_scale={delta_scale!r} "
                         "(must be finite and > 0)")
    if not is_number(delta_beta) or not 0.0 <= delta_beta < 1.0:  # type: ignore[operator]
        raise ValueError(f"Invalid delta_beta: delta_beta={delta_beta!r} "
                         "(need 0 <= delta_beta < 1)")

__all__ = [
    "DECAY_FORMS",
    "DecayRule",
    "HuberDecay",
    "L2Decay",
    "TensorDecay",
    "Threshold",
    "cautious_mask",
    "cautious_weights",
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
    return _Pull.of(d, scale, x.dtype)(x, None)


def cautious_mask(u: Tensor, p: Tensor) -> Tensor:
    """``u * p >= 0`` as a boolean tensor, computed as ``sign(u) * p >= 0``: exact, where the
    product ``u * p`` of two tiny numbers of opposite sign underflows to ``-0.0``, which
    ``>= 0`` would wrongly accept. (The rules use ``cautious_weights``: the same mask as 0/1.)"""
    with torch.no_grad():
        return torch.sign(u).mul_(p) >= 0


def cautious_weights(u: Tensor, p: Tensor) -> Tensor:
    """``cautious_mask(u, p)`` as 0/1 in ``p``'s dtype: ``min(sign(sign(u)*p) + 1, 1)`` (exact:
    products with -1, 0 and 1), 1 where ``u*p >= 0``. NaN where ``u`` or ``p`` is NaN (the
    weight is NaN after the step then anyway). Float weights, not a boolean mask: CPU kernels
    multiply by a float tensor several times faster than by a boolean one. Built chunk by chunk
    into one buffer on large CPU tensors."""
    with torch.no_grad():
        if not splits(u, p):
            return _weights_from_signs_(torch.sign(u), p)
        weights = torch.empty_like(p)
        sweep(_cautious_weights_into, weights, u, p)
        return weights


def _cautious_weights_into(weights: Tensor, u: Tensor, p: Tensor) -> None:
    _weights_from_signs_(torch.sign(u, out=weights), p)


def _weights_from_signs_(signs: Tensor, p: Tensor) -> Tensor:
    """``sign(u)`` (in ``signs``, overwritten) -> the 0/1 cautious weights."""
    return signs.mul_(p).sign_().add_(1.0).clamp_max_(1.0)


def huber_explicit_(
    p: Tensor,
    tau: float | Tensor,
    d: Threshold,
    mask: Tensor | None = None,
    signs: Tensor | None = None,
) -> None:
    """``p <- p - tau*[mask]*clip(p, -d, d)`` in place (the paper's explicit step).

    ``signs`` (instead of ``mask``): a tensor with the sign of the update ``u``; the cautious mask
    ``cautious_weights(signs, p)`` is then taken on ``p`` (which must be ``p_t``) chunk by chunk as
    the decay runs, without a weight-sized mask. ``d = inf`` without a mask is the L2 limit and is
    written as AdamW writes it, ``p*(1 - tau)``.
    """
    decay = TensorDecay.of("explicit", tau, d, p.dtype)
    if decay.l2_factor is not None and mask is None and signs is None:
        decay(p)  # one in-place multiply: no temporary to keep chunk-sized
        return
    sweep(decay, p, mask, signs)


def huber_proximal_(
    q: Tensor, tau: float | Tensor, d: Threshold, mask: Tensor | None = None
) -> None:
    """``q <- prox_{tau*H_d}(q)`` in place where ``mask`` (everywhere without one)."""
    sweep(TensorDecay.of("proximal", tau, d, q.dtype), q, mask, None)


@dataclass(frozen=True)
class TensorDecay:
    """One tensor's decay this step, its numbers made once (not once per chunk)::

        x <- x + alpha * [mask *] clip(x, -bound, bound)
        explicit:  alpha = -tau,            bound = d;    x * (1 - tau) for d = inf, no mask
        proximal:  alpha = -tau/(1 + tau),  bound = (1 + tau)*d

    Called on the whole tensor or on any chunk of it (elementwise): ``decay(x, mask, signs)``
    updates ``x`` in place; ``signs`` (explicit form) makes the mask ``cautious_weights(signs, x)``.
    """

    pull: _Pull
    alpha: float | Tensor
    l2_factor: float | Tensor | None  # explicit form with d = inf: AdamW's x*(1 - tau)

    @classmethod
    def of(cls, form: Form, tau: float | Tensor, d: Threshold, dtype: torch.dtype) -> TensorDecay:
        if form == "explicit":
            return cls(_Pull.of(d, 1.0, dtype), -tau, 1 - tau if _is_inf(d) else None)
        return cls(_Pull.of(d, 1 + tau, dtype), -tau / (1 + tau), None)

    def __call__(
        self, x: Tensor, mask: Tensor | None = None, signs: Tensor | None = None
    ) -> None:
        if signs is not None:
            mask = cautious_weights(signs, x)
        if mask is None and self.l2_factor is not None:
            x.mul_(self.l2_factor)
            return
        _add_scaled_(x, self.pull(x, mask), self.alpha)


@dataclass(frozen=True)
class _Pull:
    """``[mask *] clip(x, lo, hi)``, its bounds made once per tensor (not once per chunk)."""

    lo: float | Tensor
    hi: float | Tensor
    unbounded: bool  # d = inf: with a mask the pull is ``x * mask``, one pass

    @classmethod
    def of(cls, d: Threshold, scale: float | Tensor, dtype: torch.dtype) -> _Pull:
        bound = d.to(dtype) * scale if isinstance(d, Tensor) else d * scale
        if isinstance(bound, Tensor) and _readable_on_host(bound):
            # the same number (exactly: a value of x's dtype) as a Python float: CPU clamps with
            # number bounds are vectorised, with 0-dim tensor bounds several times slower
            bound = bound.item()
        return cls(-bound, bound, _is_inf(d))

    def __call__(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if mask is not None and self.unbounded:
            return for_autograd(x) * mask
        pulled = torch.clamp(for_autograd(x), min=self.lo, max=self.hi)
        return pulled if mask is None else pulled.mul_(mask)


def foreach_cautious_mask(us: list[Tensor], ps: list[Tensor]) -> list[Tensor]:
    """``cautious_weights`` for each pair, with ``foreach`` ops (0/1 tensors of ``p``'s dtype)."""
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


def _foreach_pull(
    xs: list[Tensor], ds: list[Threshold], scale: float, masks: list[Tensor] | None
) -> list[Tensor]:
    """``[mask *] clip(x, -scale*d, scale*d)`` for each tensor of ``xs`` (``_Pull``'s formula)."""
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


def _chunk_in_foreach(p: Tensor) -> bool:
    """Whether a ``foreach`` decay takes ``p`` on its own, chunk by chunk: large CPU tensors of
    float32/float64. (For bfloat16/float16 torch's ``foreach`` ops round number arguments such as
    ``1 - tau`` to the tensor's dtype and per-tensor ops do not: the bits would differ.)"""
    return p.dtype in (torch.float32, torch.float64) and splits(p)


def _readable_on_host(t: Tensor) -> bool:
    """A 0-dim CPU tensor whose value may be read (no device sync, no autograd, no tracing)."""
    return (
        type(t) is Tensor and t.is_cpu and not t.requires_grad
        and not torch.compiler.is_compiling()
    )


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

    def __post_init__(self) -> None:
        if not isinstance(self.form, str) or self.form not in DECAY_FORMS:
            raise ValueError(f"Invalid form: {self.form!r} (one of 'explicit', 'proximal')")
        if not isinstance(self.cautious, bool):
            raise ValueError(f"Invalid cautious: {self.cautious!r} (True or False)")
        check_threshold(self.delta, self.delta_scale, self.delta_beta)

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
        *,
        signs: list[Tensor] | None = None,
    ) -> None:
        """Apply the rule to ``params`` in place with strength ``tau`` and thresholds ``ds``.

        ``masks``: the cautious masks (``self.masks(us, p_t)``), or ``None`` to decay every
        coordinate. ``signs`` (explicit form only, instead of ``masks``): tensors with the sign of
        each update ``u``; the masks are then taken on ``params`` (which are ``p_t``) as the decay
        runs, chunk by chunk for large CPU tensors, with no weight-sized mask.

        Large contiguous CPU tensors are decayed one at a time, chunk by chunk (``chunks.sweep``);
        the others with ``foreach`` ops when ``foreach``. Same bits either way.
        """
        if signs is not None and not (self.cautious and self.before_update):
            raise ValueError("signs: only a cautious rule's explicit form takes the mask on the "
                             "tensor it decays; pass masks taken before the update instead")
        if not params:
            return
        step = huber_explicit_ if self.before_update else huber_proximal_
        if foreach and not isinstance(tau, Tensor):
            in_place = masks is None and signs is None and all(_is_inf(d) for d in ds)
            rest = [i for i, p in enumerate(params) if in_place or not _chunk_in_foreach(p)]
            if rest:
                self._apply_foreach_(rest, params, tau, ds, masks, signs)
            if len(rest) == len(params):
                return
            chunked = sorted(set(range(len(params))) - set(rest))
        else:
            chunked = list(range(len(params)))
        for i in chunked:
            mask = None if masks is None else masks[i]
            if signs is None:
                step(params[i], tau, ds[i], mask)
            else:
                huber_explicit_(params[i], tau, ds[i], signs=signs[i])

    def _apply_foreach_(
        self,
        indices: list[int],
        params: list[Tensor],
        tau: float,
        ds: list[Threshold],
        masks: list[Tensor] | None,
        signs: list[Tensor] | None,
    ) -> None:
        """``apply_`` with ``foreach`` ops on ``params[i]`` for ``i`` in ``indices``."""
        ps = [params[i] for i in indices]
        if signs is not None:
            masks_ = foreach_cautious_mask([signs[i] for i in indices], ps)
        else:
            masks_ = None if masks is None else [masks[i] for i in indices]
        step_foreach = foreach_huber_explicit_ if self.before_update else foreach_huber_proximal_
        step_foreach(ps, tau, [ds[i] for i in indices], masks_)

    def on(self, tau: float | Tensor, d: Threshold, dtype: torch.dtype) -> TensorDecay:
        """This rule's decay of one tensor (or chunk) of ``dtype`` with strength ``tau`` and
        threshold ``d``, its numbers prepared once: ``self.on(tau, d, p.dtype)(p, mask)``."""
        return TensorDecay.of(self.form, tau, d, dtype)

    def masks(self, us: list[Tensor], params: list[Tensor], foreach: bool) -> list[Tensor] | None:
        """The cautious masks for updates ``us`` and weights ``params`` (``None`` if not
        cautious). ``us`` may be anything with the sign of the update (Adam: ``exp_avg``).

        0/1 in the weights' dtype (``cautious_weights``): built chunk by chunk for large CPU
        tensors, with ``foreach`` ops for the others when ``foreach``."""
        if not self.cautious:
            return None
        if not foreach:
            return [cautious_weights(u, p) for u, p in zip(us, params)]
        out: list[Tensor | None] = [
            cautious_weights(u, p) if _chunk_in_foreach(p) and splits(u, p) else None
            for u, p in zip(us, params)
        ]
        rest = [i for i, m in enumerate(out) if m is None]
        if rest:
            for i, m in zip(rest, foreach_cautious_mask([us[i] for i in rest],
                                                        [params[i] for i in rest])):
                out[i] = m
        return out  # type: ignore[return-value]


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
