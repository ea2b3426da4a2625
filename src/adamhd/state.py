"""Optimizer state checks shared by every optimizer of ``adamhd``.

Each optimizer declares what its per-parameter state holds (a ``StateSpec``: key -> ``Entry``).
``CheckedState``, a mixin placed before ``torch.optim.Optimizer``, then gives it:

* ``load_state_dict`` that

  1. fills keys missing from the loaded ``param_groups`` with this optimizer's current group
     values (its constructor's choices), so an AdamW checkpoint keeps AdamHD's ``delta`` etc.;
  2. checks every loaded state tensor against its parameter (shape; floating dtype) and raises
     ``StateError`` naming the parameter (group index, position, key, expected vs got) before
     anything changes (a smaller ``exp_avg`` would otherwise corrupt memory in fused kernels);
  3. keeps float statistics (``Entry(dtype="statistic")``, e.g. AdamHD's ``delta_mu``) in float32
     (float64 for float64 parameters): torch's ``Optimizer.load_state_dict`` casts every floating
     state tensor except ``step`` to the parameter's dtype (bf16 for bf16 weights), which is
     undone here from the loaded values, so nothing is lost to the cast.

* ``check_state_once()``, called at the top of ``step()``: the same checks, strict (dtype and
  device too), on the first step after construction or a load, for state set by other means
  (``optimizer.state[p][...] = ...``, a user's load pre-hook).

Optimizers that are not subclasses (wrappers) can call the functions directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from adamhd.decay.threshold import statistic_dtype

__all__ = [
    "ADAM_STATE",
    "CheckedState",
    "Entry",
    "StateError",
    "SpecOf",
    "StateSpec",
    "check_layout",
    "check_optimizer_state",
    "check_state_dict",
    "fill_missing_group_keys",
    "restore_after_load",
    "restore_statistics",
    "statistic_dtype",
]

Shape = Literal["param", "scalar"] | tuple[int, ...] | Callable[[Tensor], tuple[int, ...]]
DtypeKind = Literal["param", "statistic", "float", "moment"] | torch.dtype


@dataclass(frozen=True)
class Entry:
    """What one per-parameter state tensor must be.

    ``shape``: ``"param"`` (the parameter's shape), ``"scalar"`` (0-dim), a tuple, or a function
    of the parameter giving the shape. ``dtype``: ``"param"`` (the parameter's dtype),
    ``"statistic"`` (``statistic_dtype(p)``, kept across loads), ``"float"`` (any floating dtype,
    e.g. ``step``), ``"moment"`` (the parameter's dtype, bfloat16, or uint8 codes: AdamHD's
    ``state_dtype``) or a ``torch.dtype``: a floating one is checked as ``"float"`` on a load
    (torch's load casts it) and exactly in use; an integer one (SMMF's packed signs, which
    torch's load does not cast) exactly, always.
    ``required``: a non-empty state must have it. ``cpu_ok``: may live on the CPU whatever the
    parameter's device (``step`` without ``capturable``/``fused``).
    """

    shape: Shape = "param"
    dtype: DtypeKind = "param"
    required: bool = False
    cpu_ok: bool = False


StateSpec = Mapping[str, Entry]
#: a spec that depends on the parameter and its group (the loaded group's values on a load)
SpecOf = Callable[[Mapping[str, Any], Tensor], StateSpec]

#: The state of torch's Adam/AdamW (and AdamHD's moments).
ADAM_STATE: StateSpec = {
    "step": Entry(shape="scalar", dtype="float", required=True, cpu_ok=True),
    "exp_avg": Entry(required=True),
    "exp_avg_sq": Entry(required=True),
    "max_exp_avg_sq": Entry(),
}


class StateError(ValueError):
    """A state tensor that does not fit its parameter."""




def _expected_shape(entry: Entry, p: Tensor) -> tuple[int, ...]:
    if entry.shape == "param":
        return tuple(p.shape)
    if entry.shape == "scalar":
        return ()
    if isinstance(entry.shape, tuple):
        return entry.shape
    return tuple(entry.shape(p))


def _expected_dtype(entry: Entry, p: Tensor) -> torch.dtype | None:
    if entry.dtype == "param":
        return p.dtype
    if entry.dtype == "moment":
        return None
    if entry.dtype == "statistic":
        return statistic_dtype(p)
    if isinstance(entry.dtype, torch.dtype):
        return entry.dtype
    return None


def _where(name: str, group: int, position: int, p: Tensor) -> str:
    return (
        f"{name}: state of param_groups[{group}]['params'][{position}] "
        f"(a {p.dtype} parameter of shape {tuple(p.shape)} on {p.device})"
    )


def _problem(key: str, entry: Entry, value: Any, p: Tensor, strict: bool) -> str | None:
    """What is wrong with ``value`` as state ``key`` of ``p`` (``None`` if nothing).

    Not ``strict`` (a state_dict about to be loaded): shape and a real floating dtype; torch's
    load then casts it to the right dtype and device. ``strict`` (state in use): dtype and device
    exactly as the step needs them.
    """
    if not isinstance(value, Tensor):
        if entry.shape == "scalar" and entry.dtype == "float" and not strict:
            return None if isinstance(value, (int, float)) else f"{key!r} is {type(value)}"
        return f"{key!r} is a {type(value).__name__}, expected a Tensor"
    shape = _expected_shape(entry, p)
    if tuple(value.shape) != shape:
        return f"{key!r} has shape {tuple(value.shape)}, expected {shape}"
    if entry.dtype == "moment":
        allowed = (p.dtype, torch.bfloat16, torch.uint8)
        if value.dtype not in allowed and (strict or not value.is_floating_point()):
            return f"{key!r} has dtype {value.dtype}, expected one of {allowed}"
    elif isinstance(entry.dtype, torch.dtype) and not entry.dtype.is_floating_point:
        if value.dtype != entry.dtype:
            return f"{key!r} has dtype {value.dtype}, expected {entry.dtype}"
    elif not value.is_floating_point():
        return f"{key!r} has dtype {value.dtype}, expected a floating dtype"
    if not strict:
        return None
    dtype = _expected_dtype(entry, p)
    if dtype is not None and value.dtype != dtype:
        return f"{key!r} has dtype {value.dtype}, expected {dtype}"
    if value.device != p.device and not (entry.cpu_ok and value.device.type == "cpu"):
        return f"{key!r} is on {value.device}, expected {p.device}"
    return None


def _check(name: str, spec: StateSpec | SpecOf, items: Iterator, strict: bool) -> None:
    for group, position, p, p_state, values in items:
        if (p_state is None and strict) or (isinstance(p_state, Mapping) and not p_state):
            continue  # in use: no state yet; loaded: none saved for this parameter
        if not isinstance(p_state, Mapping):
            where = _where(name, group, position, p)
            raise StateError(f"{where}: the state is a {type(p_state).__name__}, expected a dict")
        entries = spec(values, p) if callable(spec) else spec
        for key, entry in entries.items():
            if key not in p_state:
                problem = f"{key!r} is missing" if entry.required else None
            else:
                problem = _problem(key, entry, p_state[key], p, strict)
            if problem is not None:
                raise StateError(f"{_where(name, group, position, p)}: {problem}")


def _loaded_items(optimizer: torch.optim.Optimizer, state_dict: Mapping[str, Any]) -> Iterator:
    """(group index, position, param, loaded state, group values after the load) as torch's
    load pairs them (by position); the group values are the loaded group's over this
    optimizer's (``fill_missing_group_keys``)."""
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups):
        return  # torch's load raises its own error about the group count
    for gi, (group, saved) in enumerate(zip(optimizer.param_groups, saved_groups)):
        if len(group["params"]) != len(saved["params"]):
            return  # likewise
        values = {**group, **saved}
        for position, (p, saved_id) in enumerate(zip(group["params"], saved["params"])):
            yield gi, position, p, state_dict["state"].get(saved_id, {}), values


def check_layout(optimizer: torch.optim.Optimizer, state_dict: Any) -> None:
    """Raise ``StateError`` unless ``state_dict`` is laid out as torch's: a dict with ``"state"``
    (a dict) and ``"param_groups"`` (a list of dicts, each with a ``"params"`` list)."""
    name = f"{type(optimizer).__name__}.load_state_dict"
    if not isinstance(state_dict, Mapping):
        raise StateError(f"{name}: expected a dict with 'state' and 'param_groups', got a "
                         f"{type(state_dict).__name__}")
    for key, kinds, want in (("state", Mapping, "a dict"),
                             ("param_groups", (list, tuple), "a list of dicts")):
        if not isinstance(state_dict.get(key), kinds):
            raise StateError(f"{name}: state_dict[{key!r}] is a "
                             f"{type(state_dict.get(key)).__name__}, expected {want}")
    for index, group in enumerate(state_dict["param_groups"]):
        if not isinstance(group, Mapping) or not isinstance(group.get("params"), (list, tuple)):
            raise StateError(f"{name}: state_dict['param_groups'][{index}] is not a dict with "
                             "a 'params' list")


def check_state_dict(
    optimizer: torch.optim.Optimizer, state_dict: Mapping[str, Any], spec: StateSpec | SpecOf
) -> None:
    """Raise ``StateError`` if ``state_dict`` is not laid out as torch's, or a state tensor of it
    does not fit its parameter (``spec``: one for all parameters, or a function of the group's
    values and the parameter)."""
    check_layout(optimizer, state_dict)
    name = f"{type(optimizer).__name__}.load_state_dict"
    _check(name, spec, _loaded_items(optimizer, state_dict), strict=False)


def check_optimizer_state(optimizer: torch.optim.Optimizer, spec: StateSpec | SpecOf) -> None:
    """Raise ``StateError`` if a state tensor in use does not fit its parameter exactly."""
    items = (
        (gi, position, p, optimizer.state.get(p), group)
        for gi, group in enumerate(optimizer.param_groups)
        for position, p in enumerate(group["params"])
    )
    _check(f"{type(optimizer).__name__}.step", spec, items, strict=True)


def fill_missing_group_keys(
    optimizer: torch.optim.Optimizer, state_dict: Mapping[str, Any]
) -> dict[str, Any]:
    """A shallow copy of ``state_dict`` whose groups gain the keys they lack from this optimizer's
    groups (same index): an AdamW checkpoint keeps this optimizer's constructor choices."""
    groups = [
        {**{k: v for k, v in current.items() if k != "params"}, **saved}
        for current, saved in zip(optimizer.param_groups, state_dict["param_groups"])
    ]
    groups += state_dict["param_groups"][len(groups):]
    return {**state_dict, "param_groups": groups}


#: what ``restore_after_load`` asks of each loaded state tensor: the dtype it must have
#: (``key``, the saved value, its parameter -> a dtype; ``None``: leave torch's cast)
DtypeRule = Callable[[str, Tensor, Tensor], "torch.dtype | None"]


def restore_after_load(
    optimizer: torch.optim.Optimizer, state_dict: Mapping[str, Any], dtype_of: DtypeRule
) -> None:
    """After torch's ``load_state_dict``, which casts every floating state tensor but ``step`` to
    its parameter's dtype: the tensors for which ``dtype_of(key, saved, p)`` names a dtype are
    made again from the saved values in that dtype (a copy, on the device torch's load chose).
    The one restore of the library: ``CheckedState``, ``CheckedOptimizer`` and
    ``with_decoupled_decay`` each pass their rule."""
    saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
    params = chain.from_iterable(g["params"] for g in optimizer.param_groups)
    for saved_id, p in zip(saved_ids, params):
        saved = state_dict["state"].get(saved_id)
        if not isinstance(saved, Mapping):
            continue
        state = optimizer.state[p]
        for key, value in saved.items():
            if not isinstance(value, Tensor) or key not in state:
                continue
            dtype = dtype_of(key, value, p)
            if dtype is not None:
                state[key] = value.detach().to(device=state[key].device, dtype=dtype, copy=True)


def statistics_rule(keys: Iterable[str]) -> DtypeRule:
    """``dtype_of`` for ``restore_after_load``: ``statistic_dtype(p)`` for ``keys``."""
    chosen = frozenset(keys)
    return lambda key, value, p: statistic_dtype(p) if key in chosen else None


def restore_statistics(
    optimizer: torch.optim.Optimizer, state_dict: Mapping[str, Any], spec: StateSpec
) -> None:
    """After torch's load: statistics back to ``statistic_dtype(p)``, from the loaded values."""
    keys = [key for key, entry in spec.items() if entry.dtype == "statistic"]
    restore_after_load(optimizer, state_dict, statistics_rule(keys))


class CheckedState:
    """Mixin for ``torch.optim.Optimizer`` subclasses (list it first): checked state loads.

    Subclasses set ``state_spec`` and call ``self.check_state_once()`` at the top of ``step``.
    """

    state_spec: ClassVar[StateSpec] = ADAM_STATE
    _state_checked: bool = False

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load, plus: missing group keys keep this optimizer's values, every state
        tensor is checked against its parameter first, float statistics keep their dtype."""
        optimizer: Any = self
        check_state_dict(optimizer, state_dict, self.state_spec)  # the layout, then the state
        state_dict = fill_missing_group_keys(optimizer, state_dict)
        super().load_state_dict(state_dict)  # type: ignore[misc]
        restore_statistics(optimizer, state_dict, self.state_spec)
        self._state_checked = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        self._state_checked = False

    def check_state_once(self) -> None:
        """Strict check of the state in use, once after construction or a load (not while
        ``torch.compile`` traces: the check is host-side Python; loads are checked anyway)."""
        if not self._state_checked and not torch.compiler.is_compiling():
            check_optimizer_state(self, self.state_spec)  # type: ignore[arg-type]
            self._state_checked = True
