"""What ``with_decoupled_decay`` checks of a state_dict before its load (``adamhd.state``).

* Its own keys, for every base: ``delta_mu`` and the CPR state (``cpr_lambda``, ``cpr_kappa``,
  ``cpr_step``), each a 0-dim float statistic when present.
* The state of torch's own optimizers, by their exact class (a subclass may keep other state):
  each key's shape and dtype kind as the base's first step makes it, and the keys that step
  needs (``max_exp_avg_sq`` with ``amsgrad``, RMSprop's ``momentum_buffer`` with ``momentum``
  and ``grad_avg`` with ``centered``, as the loaded group sets them).
* Nothing more of any other base: no shape rule is safe for state one does not know (a flat
  buffer, a per-rank shard, a growing history may each differ from the parameter's shape, or
  equal its numel by chance). A base that is itself ``CheckedState`` or ``CheckedOptimizer``
  (``MomentumSGD``, ``adamhd.AdaLo``...) checks its own state in its ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from adamhd.decay.cpr import CPR_STATE_KEYS
from adamhd.decay.native import MU_KEY
from adamhd.state import ADAM_STATE, Entry, SpecOf, StateSpec

__all__ = ["BASE_STATE", "WRAPPER_STATE", "base_state_spec", "wrapped_state_spec"]

#: the wrapper's own state: optional (made by its first step), 0-dim statistics
WRAPPER_STATE: StateSpec = {key: Entry(shape="scalar", dtype="statistic")
                            for key in (MU_KEY, *CPR_STATE_KEYS)}

STEP = ADAM_STATE["step"]  # 0-dim, any float dtype, on the CPU or the parameter's device
SCALAR = STEP  # NAdam's mu_product, ASGD's eta and mu: made alike
MOMENT = Entry(required=True)  # the parameter's shape and dtype


def _moments(*keys: str) -> StateSpec:
    return {"step": STEP, **dict.fromkeys(keys, MOMENT)}


def _adam(group: Mapping[str, Any], p: Tensor) -> StateSpec:
    return {**ADAM_STATE, "max_exp_avg_sq": Entry(required=bool(group.get("amsgrad")))}


def _rmsprop(group: Mapping[str, Any], p: Tensor) -> StateSpec:
    return {**_moments("square_avg"),
            "momentum_buffer": Entry(required=bool(group.get("momentum"))),
            "grad_avg": Entry(required=bool(group.get("centered")))}


def _adafactor(group: Mapping[str, Any], p: Tensor) -> StateSpec:
    if p.dim() < 2:
        return _moments("variance")
    row = (*p.shape[:-1], 1)
    col = (*p.shape[:-2], 1, p.shape[-1])
    return {"step": STEP, "row_var": Entry(shape=row, required=True),
            "col_var": Entry(shape=col, required=True)}


def _fixed(spec: StateSpec) -> SpecOf:
    return lambda group, p: spec


#: torch's optimizers whose state is known, by class name in ``torch.optim``
BASE_STATE: dict[str, SpecOf] = {
    "Adam": _adam,
    "AdamW": _adam,
    "NAdam": _fixed({**_moments("exp_avg", "exp_avg_sq"), "mu_product": SCALAR}),
    "RAdam": _fixed(_moments("exp_avg", "exp_avg_sq")),
    "Adamax": _fixed(_moments("exp_avg", "exp_inf")),
    "Adagrad": _fixed(_moments("sum")),
    "Adadelta": _fixed(_moments("square_avg", "acc_delta")),
    "Rprop": _fixed(_moments("prev", "step_size")),
    "ASGD": _fixed({**_moments("ax"), "eta": SCALAR, "mu": SCALAR}),
    "RMSprop": _rmsprop,
    "SGD": _fixed({"momentum_buffer": Entry()}),  # made when missing (momentum != 0)
    "Muon": _fixed({"momentum_buffer": MOMENT}),
    "Adafactor": _adafactor,
}


def base_state_spec(base: type) -> SpecOf | None:
    """The spec of ``base``'s own state if ``base`` is one of torch's optimizers listed in
    ``BASE_STATE`` (the class itself, not a subclass), else ``None``."""
    known = getattr(torch.optim, base.__name__, None)
    return BASE_STATE.get(base.__name__) if known is base else None


def wrapped_state_spec(base: type) -> SpecOf:
    """What a load into ``with_decoupled_decay(base)`` checks: the wrapper's keys, and the
    base's own state where it is known."""
    spec_of = base_state_spec(base)
    if spec_of is None:
        return _fixed(WRAPPER_STATE)
    return lambda group, p: {**spec_of(group, p), **WRAPPER_STATE}
