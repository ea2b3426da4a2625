"""The decay rules inside an optimizer's own step ("native" decay), for the optimizers of
``adamhd.optim`` whose ``weight_decay`` is their own (NSGDA, AdaLo, AM-SGD, AdaMomentum, FCAdam).

The group keys are ``adamhd.decay.options``' (``weight_decay``, ``decay``, ``delta``,
``delta_scale``, ``delta_beta``, ``decay_form``, ``cautious_decay``, ``decay_scaling``), checked
by ``check_decay_options``; only the default rule differs: ``decay="l2"`` (``NATIVE_DEFAULTS``),
the explicit ``p*(1 - lr*weight_decay)`` these optimizers applied before, bit for bit.

An optimizer's step calls, per group (``params`` with a gradient, their state dicts, the step's
``lr``, a function that applies the update to ``params``, and tensors with the update's sign)::

    step_decay = StepDecay.from_group(group)           # None when weight_decay == 0
    decayed_update_(step_decay, params, states, lr, apply_update, signs=momenta)

``decayed_update_`` computes the thresholds from ``p_t`` (the adaptive EMA ``mu`` is
``state["delta_mu"]``, created as ``mean|p_t|`` on first use, as in ``AdamHD``), then::

    explicit:   p <- rule(p_t)   [where sign(u)*p_t >= 0 if cautious];  apply_update()
    proximal:   [mask from p_t];  apply_update();  p <- prox(p)   [where the mask is 1]

Cautious decay needs ``signs`` (anything with the sign of the update ``u``, ``p_new = p_t -
lr*u``: a momentum, ``exp_avg``); an optimizer that cannot give it sets a reason and
``check_native_decay`` refuses ``cautious_decay=True`` with it. Inside ``with_decoupled_decay``
the wrapper owns the decay keys (``decay="cpr"``, ``decay_scaling="stable"``) and sets the base's
``weight_decay`` to 0 during its step: the base neither checks nor applies them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from adamhd.decay.options import DECAY_DEFAULTS, check_decay_options, rule_from_group
from adamhd.decay.rules import DecayRule
from adamhd.decay.strength import decay_strength, group_decay_coefficient
from adamhd.decay.threshold import mu_dtype
from adamhd.distributed import whole_mean_abs

__all__ = [
    "MU_KEY",
    "NATIVE_DEFAULTS",
    "StepDecay",
    "check_native_decay",
    "decay_options",
    "decayed_update_",
]

#: the adaptive threshold's EMA in the optimizer's state (AdamHD's and the wrapper's name)
MU_KEY = "delta_mu"

#: the decay keys' defaults for native decay: the former decoupled L2 (explicit) of these optimizers
NATIVE_DEFAULTS: dict[str, Any] = {**DECAY_DEFAULTS, "decay": "l2"}


def decay_options(owner: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The decay keys a constructor took as ``**decay_options``, missing ones from
    ``NATIVE_DEFAULTS``; ``TypeError`` naming any key that is not a decay key."""
    unknown = sorted(set(given) - set(NATIVE_DEFAULTS))
    if unknown:
        raise TypeError(f"{owner}.__init__() got unexpected keyword arguments {unknown} (decay "
                        f"keys: {', '.join(NATIVE_DEFAULTS)})")
    return {**NATIVE_DEFAULTS, **given}


def check_native_decay(
    group: Mapping[str, Any], owner: str, cautious_reason: str | None = None
) -> None:
    """``check_decay_options`` (``ValueError`` naming the first bad key), then ``ValueError`` for
    ``cautious_decay=True`` where the optimizer cannot give the update's sign
    (``cautious_reason``: why not)."""
    check_decay_options(group)
    if cautious_reason is not None and group.get("cautious_decay", False):
        raise ValueError(f"{owner} cannot apply cautious_decay=True natively: {cautious_reason}; "
                         "use adamhd.with_decoupled_decay for the cautious rule")


@dataclass(frozen=True)
class StepDecay:
    """One group's decay rule this step: the rule record and ``c`` (``tau = lr*c``)."""

    rule: DecayRule
    coefficient: float

    @classmethod
    def from_group(cls, group: Mapping[str, Any]) -> StepDecay | None:
        """The group's decay (checked keys), ``None`` when ``weight_decay`` is 0. ``ValueError``
        from ``decay_scaling="schedule"`` without a usable ``initial_lr``."""
        if group["weight_decay"] == 0:
            return None
        return cls(rule_from_group(group), group_decay_coefficient(group))

    def thresholds(self, params: list[Tensor], states: list[dict[str, Any]],
                   foreach: bool) -> list[float | Tensor]:
        """``d_t`` per tensor from ``p_t``; advances ``state["delta_mu"]`` (created as
        ``mean|p_t|`` on first use: ``mu_1 = a_1``). Whole-tensor means of DTensors."""
        if not self.rule.adaptive:
            return self.rule.thresholds(params, [], foreach)
        one_kind = foreach and len({(p.device, p.dtype) for p in params}) == 1
        abs_means = whole_mean_abs(params, one_kind)
        for p, a, state in zip(params, abs_means, states):
            if MU_KEY not in state:
                state[MU_KEY] = a.to(mu_dtype(p)).clone()
        mus = [state[MU_KEY] for state in states]
        return self.rule.thresholds(params, mus, one_kind, abs_means=abs_means)


def decayed_update_(
    step_decay: StepDecay | None,
    params: list[Tensor],
    states: list[dict[str, Any]],
    lr: float | Tensor,
    apply_update: Callable[[], None],
    signs: list[Tensor] | None = None,
    foreach: bool = True,
) -> None:
    """``apply_update()`` with the group's decay around it (see the module docstring); just
    ``apply_update()`` when ``step_decay`` is ``None`` (no decay this step).

    ``foreach``: the decay's ``torch._foreach_*`` ops (the default: the former
    ``torch._foreach_mul_(params, 1 - lr*wd)``'s bits for L2), or per tensor (a per-tensor step
    whose former decay was ``p.mul_(...)``). A ``Tensor`` ``lr`` decays per tensor."""
    if step_decay is None:
        apply_update()
        return
    rule = step_decay.rule
    if rule.cautious and signs is None:
        raise ValueError("cautious decay needs the sign of the update (signs=)")
    tau = decay_strength(lr, step_decay.coefficient)
    ds = step_decay.thresholds(params, states, foreach)
    masks = None
    if rule.before_update:
        rule.apply_(params, tau, ds, foreach, signs=signs if rule.cautious else None)
    elif rule.cautious:
        masks = rule.masks(signs, params, foreach)  # type: ignore[arg-type]
    apply_update()
    if not rule.before_update:
        rule.apply_(params, tau, ds, foreach, masks)
