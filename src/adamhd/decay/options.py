"""Decay options of a param group: their defaults, their validation, and the rule they select.

Keys (per group; every optimizer with decoupled decay uses these names):

* ``weight_decay``: the coefficient ``lambda`` (>= 0, finite);
* ``decay``: ``"huber"`` (default) or ``"l2"``;
* ``delta`` (``"adaptive"`` or a float > 0, ``math.inf`` allowed), ``delta_scale`` (> 0),
  ``delta_beta`` (in [0, 1)): Huber's threshold, ignored by ``"l2"``;
* ``decay_form``: ``"explicit"`` (default) or ``"proximal"``;
* ``cautious_decay``: ``False`` (default) or ``True`` (arXiv 2510.12402);
* ``decay_scaling``: ``"lr"`` (default) or ``"schedule"`` (``adamhd.decay.strength``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from adamhd.decay.rules import (
    DECAY_FORMS,
    DecayRule,
    HuberDecay,
    L2Decay,
    check_threshold,
    is_number,
)
from adamhd.decay.strength import DECAY_SCALINGS, check_schedule_start

__all__ = ["DECAY_DEFAULTS", "DECAY_RULES", "check_decay_options", "rule_from_group"]

DECAY_RULES: dict[str, type[DecayRule]] = {"huber": HuberDecay, "l2": L2Decay}

#: Defaults of the decay keys (``weight_decay``'s default belongs to each optimizer).
DECAY_DEFAULTS: dict[str, Any] = dict(
    decay="huber",
    delta="adaptive",
    delta_scale=1.5,
    delta_beta=0.99,
    decay_form="explicit",
    cautious_decay=False,
    decay_scaling="lr",
)


def _get(group: Mapping[str, Any], key: str) -> Any:
    return group[key] if key in group else DECAY_DEFAULTS[key]


def check_decay_options(
    group: Mapping[str, Any],
    rules: tuple[str, ...] = tuple(DECAY_RULES),
    scalings: tuple[str, ...] = DECAY_SCALINGS,
) -> None:
    """Raise ``ValueError`` naming the first invalid decay key of ``group`` (missing keys take
    ``DECAY_DEFAULTS``; ``weight_decay`` must be present). ``rules`` and ``scalings``: the values
    of ``decay`` and ``decay_scaling`` the caller implements (``with_decoupled_decay`` adds
    ``"cpr"`` and ``"stable"``)."""
    weight_decay = group["weight_decay"]
    if not is_number(weight_decay) or not 0.0 <= weight_decay < math.inf:
        # torch's wording ("Invalid weight_decay value: -1"), then ours
        raise ValueError(
            f"Invalid weight_decay value: {weight_decay} (weight_decay must be finite and >= 0)"
        )
    _check_choice(group, "decay", rules)
    check_threshold(*(_get(group, key) for key in ("delta", "delta_scale", "delta_beta")))
    _check_choice(group, "decay_form", DECAY_FORMS)
    cautious = _get(group, "cautious_decay")
    if not isinstance(cautious, bool):
        raise ValueError(f"Invalid cautious_decay: {cautious!r} (True or False)")
    _check_choice(group, "decay_scaling", scalings)
    check_schedule_start(group)


def _check_choice(group: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> None:
    value = _get(group, key)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"Invalid {key}: {value!r} (one of {', '.join(map(repr, choices))})")


def rule_from_group(group: Mapping[str, Any]) -> DecayRule:
    """The rule record a (validated) param group selects."""
    common = dict(form=_get(group, "decay_form"), cautious=_get(group, "cautious_decay"))
    if _get(group, "decay") == "l2":
        return L2Decay(**common)
    return HuberDecay(
        delta=_get(group, "delta"),
        delta_scale=_get(group, "delta_scale"),
        delta_beta=_get(group, "delta_beta"),
        **common,
    )
