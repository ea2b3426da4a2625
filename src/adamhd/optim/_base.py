"""What every optimizer of ``adamhd.optim`` shares: checked hyperparameters, checked gradients,
and float statistics that stay float32 (float64 for float64 weights) across ``load_state_dict``.

Each optimizer module keeps its math in one plain function; its class only validates, builds
state and calls that function.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from adamhd.decay.native import MU_KEY, StepDecay, check_native_decay, decay_options
from adamhd.decay.strength import remember_initial_lr
from adamhd.decay.threshold import statistic_dtype
from adamhd.distributed import is_dtensor
from adamhd.state import (
    ADAM_STATE,
    Entry,
    SpecOf,
    StateSpec,
    check_optimizer_state,
    check_state_dict,
    restore_after_load,
)

Params = Iterable[Tensor] | Iterable[dict[str, Any]]


#: float statistics (factors, norms, EMAs of scalars): ``adamhd.decay.threshold``'s policy
stat_dtype = statistic_dtype


def lr_value(lr: Any) -> float:
    """``lr`` as a float: a number or a 1-element tensor (as torch's optimizers accept)."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"lr as a Tensor must have exactly one element, got shape {lr.shape}")
        return float(lr.detach().reshape(()))
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise ValueError(f"lr must be a float or a 1-element Tensor, got {type(lr).__name__}")
    return float(lr)


def check(name: str, value: Any, ok: Callable[[float], bool], need: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a real number with ``ok(value)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(float(value)):
        raise ValueError(f"Invalid {name}: {name}={value!r} (need {need})")


# The checks of the group options, each ``(name, value) -> None`` raising ``ValueError`` naming
# the option; an optimizer lists its options' checks in ``CheckedOptimizer.checks``.


@dataclasses.dataclass(frozen=True)
class Range:
    """A real number with ``ok(value)`` (``need`` says which)."""

    ok: Callable[[float], bool]
    need: str

    def __call__(self, name: str, value: Any) -> None:
        check(name, value, self.ok, self.need)


finite_nonneg = Range(lambda v: 0.0 <= v < math.inf, "a finite number >= 0")
positive = Range(lambda v: 0.0 < v < math.inf, "a finite number > 0")
in_unit = Range(lambda v: 0.0 <= v < 1.0, "0 <= value < 1")
in_open_closed_unit = Range(lambda v: 0.0 < v <= 1.0, "0 < value <= 1")
decay_exponent = Range(lambda v: -1.0 <= v <= 0.0, "-1 <= value <= 0")


def positive_or_none(name: str, value: Any) -> None:
    if value is not None:
        check(name, value, positive.ok, "a finite number > 0 or None")


def beta_pair(name: str, value: Any) -> None:
    """A pair ``(beta1, beta2)``, each in [0, 1)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"Invalid {name}: {name}={value!r} (need a pair (beta1, beta2))")
    in_unit("beta1", value[0])
    in_unit("beta2", value[1])


def flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"Invalid {name}: {name}={value!r} (need True or False)")


def integer(minimum: int) -> Callable[[str, Any], None]:
    def check_integer(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"Invalid {name}: {name}={value!r} (need an integer >= {minimum})")
    return check_integer


def one_of(choices: tuple[str, ...]) -> Callable[[str, Any], None]:
    def check_choice(name: str, value: Any) -> None:
        if value not in choices:
            raise ValueError(f"Invalid {name}: {value!r} (one of {', '.join(choices)})")
    return check_choice


def check_lr(group: dict[str, Any]) -> None:
    value = lr_value(group["lr"])
    if not 0.0 <= value < math.inf:
        raise ValueError(f"Invalid learning rate: lr={value} (must be finite and >= 0)")


#: what ``locals()`` on the first line of a constructor holds besides its group options
NOT_OPTIONS = frozenset({"self", "params", "__class__"})


def options(arguments: dict[str, Any]) -> dict[str, Any]:
    """A constructor's group options with their values: its arguments (``locals()`` on its
    first line) but ``self`` and ``params``."""
    return {k: v for k, v in arguments.items() if k not in NOT_OPTIONS}


class CheckedOptimizer(Optimizer):
    """A ``torch.optim.Optimizer`` that validates every group and the gradients before a step.

    Subclasses set ``name``, ``stat_keys`` (float state kept in ``stat_dtype``), ``dtensor_reason``
    (``None`` if sharded DTensor parameters are supported, else why not) and ``checks``, and pass
    their constructor's arguments on as they are (``super().__init__(params, locals())``): every
    argument is a group option, with the signature's default.
    """

    name = "optimizer"
    stat_keys: tuple[str, ...] = ()
    dtensor_reason: str | None = None
    #: each group option's check (but ``lr``'s, ``check_lr``), in the order they run
    checks: ClassVar[dict[str, Callable[[str, Any], None]]] = {}

    def __init__(self, params: Params, arguments: dict[str, Any]) -> None:
        """``arguments``: the subclass constructor's (``locals()``), or its group defaults; with
        ``native_decay``, a ``**decay`` dict holds the decay keys (checked by
        ``adamhd.decay.native.decay_options``; the group option ``decay`` is a name)."""
        defaults = options(arguments)
        if self.native_decay and isinstance(defaults.get("decay"), Mapping):
            defaults.update(decay_options(self.name, defaults.pop("decay")))
        super().__init__(params, defaults)

    def check_group(self, group: dict[str, Any]) -> None:
        """``lr`` and then ``checks``, in order: ``ValueError`` naming the first bad option."""
        check_lr(group)
        for key, check_option in self.checks.items():
            check_option(key, group[key])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        self.check_group(merged)
        self.check_decay(merged)
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        if self.dtensor_reason is not None and any(is_dtensor(p) for p in params):
            raise RuntimeError(
                f"{self.name} does not support DTensor (FSDP2 / tensor-parallel) parameters: "
                f"{self.dtensor_reason}"
            )
        super().add_param_group({**param_group, "params": params})
        if self.native_decay:
            remember_initial_lr(self.param_groups[-1])  # decay_scaling="schedule"

    def params_with_grad(self, group: dict[str, Any]) -> list[Tensor]:
        return [p for p in group["params"] if p.grad is not None]

    def check_grads(self) -> None:
        """Reject what the step cannot do, before any weight or state changes."""
        for group in self.param_groups:
            for p in self.params_with_grad(group):
                if p.grad.is_sparse:
                    raise RuntimeError(f"{self.name} does not support sparse gradients")
                if torch.is_complex(p):
                    raise RuntimeError(f"{self.name} does not support complex parameters")

    # The step loop that every optimizer here shares: ``step`` -> ``step_groups`` (checks, per
    # group its hyperparameters, state and gradients) -> ``step_batches`` (default: ``group_step``
    # per group; NSGDA, Amos and AM-SGD take all groups at once). AdaLo's ``step`` takes the loss.

    #: the record of one group's step hyperparameters; its fields are group keys, but ``lr`` (a
    #: float) and ``step_decay`` (the group's ``StepDecay``, ``adamhd.decay.native``)
    hyper_type: ClassVar[type | None] = None
    #: whether the group's ``weight_decay`` runs through the decay rules (the decay keys of
    #: ``adamhd.decay.native``); ``cautious_decay_reason``: why cautious decay is not offered
    native_decay: ClassVar[bool] = False
    cautious_decay_reason: ClassVar[str | None] = None

    def check_decay(self, group: dict[str, Any]) -> None:
        """With ``native_decay``: ``weight_decay`` and the decay keys (``ValueError`` naming the
        first bad one), after ``check_group``. Not inside ``with_decoupled_decay``, whose rules
        own the keys (the base step sees ``weight_decay=0``)."""
        if not self.native_decay:
            return
        finite_nonneg("weight_decay", group["weight_decay"])
        if not getattr(self, "decay_by_wrapper", False):
            check_native_decay(group, self.name, self.cautious_decay_reason)

    def init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """``p``'s state: ``new_state`` on its first step."""
        state = self.state[p]
        if not state:
            state.update(self.new_state(p, group))
        return state

    def new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """``p``'s state before its first step (default: none)."""
        return {}

    def group_step(
        self, params: list[Tensor], grads: list[Tensor], states: list[dict[str, Tensor]], hyper: Any
    ) -> None:
        """The optimizer's math on one group (its module's plain function)."""
        raise NotImplementedError

    def group_hyper(self, group: dict[str, Any], **step_values: Any) -> Any:
        """``hyper_type`` from the group's values (``lr`` as a float, ``step_decay`` from the
        decay keys) and ``step_values`` (values of this step, e.g. AdaLo's loss level); without
        a ``hyper_type``, the group itself plus its ``step_decay``."""
        if self.hyper_type is None:
            return {**group, "step_decay": StepDecay.from_group(group)}
        values = {}
        for f in dataclasses.fields(self.hyper_type):
            if f.name == "step_decay":
                values[f.name] = StepDecay.from_group(group)
            else:
                values[f.name] = step_values[f.name] if f.name in step_values else group[f.name]
        return self.hyper_type(**{**values, "lr": lr_value(group["lr"])})

    def group_grads(self, group: dict[str, Any], params: list[Tensor]) -> list[Tensor]:
        """The gradients the step uses (negated for ``maximize``)."""
        return [-p.grad if group["maximize"] else p.grad for p in params]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step: the closure, then ``step_groups``."""
        loss = run_closure(closure)
        self.step_groups()
        return loss

    def step_groups(self, **step_values: Any) -> None:
        """The checks (gradients; every group's options and hyperparameters, before anything
        changes), then per group with gradients its state and gradients, then ``step_batches``."""
        self.check_state_once()
        self.check_step_inputs()
        work = [(g, ps) for g in self.param_groups if (ps := self.params_with_grad(g))]
        hypers = [self.group_hyper(g, **step_values) for g, _ in work]
        batches = [
            GroupBatch(ps, self.group_grads(g, ps), [self.init_state(p, g) for p in ps], h)
            for (g, ps), h in zip(work, hypers)
        ]
        self.step_batches(batches)

    def check_step_inputs(self) -> None:
        """What a step refuses before anything changes: the gradients, then every group's
        options (a group may have been edited since construction). ``with_decoupled_decay``
        calls it before its decay, so a refused step leaves the weights as they were."""
        self.check_grads()
        for index, group in enumerate(self.param_groups):
            try:
                self.check_group(group)
                self.check_decay(group)
            except ValueError as error:
                raise ValueError(f"param_groups[{index}]: {error}") from None

    def step_batches(self, batches: list[GroupBatch]) -> None:
        """The math on every group with gradients: ``group_step`` per group by default."""
        for b in batches:
            self.group_step(b.params, b.grads, b.states, b.hyper)

    # What a parameter's state holds (``adamhd.state``): checked on ``load_state_dict`` before
    # anything changes, and strictly once at the first step after construction or a load.

    #: keys the step adds when they are missing (optional); native decay's ``delta_mu`` is added
    later_state: ClassVar[StateSpec] = {}
    #: an explicit spec for all parameters, in place of the one ``state_spec_of`` derives
    state_spec: ClassVar[StateSpec | None] = None
    _state_checked = False

    def state_spec_of(self, group: Mapping[str, Any], p: Tensor) -> StateSpec:
        """``p``'s state: what ``new_state`` makes on a meta-device stand-in of ``p`` (no memory;
        every key required, its shape and dtype as made), then ``later_state`` and ``delta_mu``."""
        if self.state_spec is not None:
            made = self.state_spec
        else:
            made = {key: self._made_entry(key, value, p)
                    for key, value in self.new_state(meta_like(p), dict(group)).items()}
        spec = {**made, **self.later_state}
        if self.native_decay:
            spec[MU_KEY] = Entry(shape="scalar", dtype="statistic")
        return spec

    def _made_entry(self, key: str, value: Tensor, p: Tensor) -> Entry:
        """The entry of a state tensor that ``new_state`` made for ``p``."""
        if key == "step":
            return ADAM_STATE["step"]  # as torch's optimizers keep it (a number is accepted)
        kind: Any = value.dtype
        if key in self.stat_keys:
            kind = "statistic"
        elif value.dtype == p.dtype:
            kind = "param"
        return Entry(shape=tuple(value.shape), dtype=kind, required=True,
                     cpu_ok=value.device.type == "cpu")

    def check_state_once(self) -> None:
        """The state in use, strictly (dtype, device), once after construction or a load: state
        set by other means (assigned, a load pre-hook) is refused before the step changes
        anything. Not while ``torch.compile`` traces (host-side Python)."""
        if not self._state_checked and not torch.compiler.is_compiling():
            check_optimizer_state(self, per_layout(self.state_spec_of))
            self._state_checked = True

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, checked first (``StateError`` naming the parameter and key, nothing
        changed); then the float statistics in ``stat_keys`` (and native decay's ``delta_mu``)
        keep their saved precision and integer state (SMMF's packed signs) its dtype: torch
        casts every state tensor but ``step`` to the parameter's dtype."""
        check_state_dict(self, state_dict, per_layout(self.state_spec_of))
        super().load_state_dict(state_dict)  # ends with __setstate__: checked again at a step
        restore_after_load(self, state_dict, self._restored_dtype)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """torch's (its ``load_state_dict`` ends here); a ``step`` saved as a number becomes
        the float32 tensor ``new_step`` makes, as torch's optimizers convert theirs."""
        super().__setstate__(state)
        for p_state in self.state.values():
            step = p_state.get("step")
            if isinstance(step, (int, float)) and not isinstance(step, bool):
                p_state["step"] = torch.tensor(float(step), dtype=torch.float32)
        self._state_checked = False

    def _restored_dtype(self, key: str, value: Tensor, p: Tensor) -> torch.dtype | None:
        if key in self.stat_keys or key == MU_KEY:
            return stat_dtype(p)
        if key != "step" and not value.is_floating_point():
            return value.dtype
        return None


@dataclasses.dataclass
class GroupBatch:
    """One group's step: its parameters with a gradient, their gradients, state and hyper."""

    params: list[Tensor]
    grads: list[Tensor]
    states: list[dict[str, Any]]
    hyper: Any


def state_lists(states: list[dict[str, Any]], **keys: str) -> dict[str, list[Any]]:
    """Per field of a group record, the list of one state key: ``field=key`` gives
    ``{field: [state[key] for state in states]}``."""
    return {name: [state[key] for state in states] for name, key in keys.items()}


def run_closure(closure: Callable[[], Any] | None) -> Any:
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def zero_moment(p: Tensor) -> Tensor:
    """A moment of ``p`` (its shape, dtype, device and layout), zero."""
    return torch.zeros_like(p, memory_format=torch.preserve_format)


def per_layout(spec_of: SpecOf) -> SpecOf:
    """``spec_of`` made once per group and plain-tensor layout (shape, strides, dtype, device)
    during one check: the parameters of repeated layers share it. DTensors: each its own."""
    memo: dict[tuple, tuple[Mapping[str, Any], StateSpec]] = {}

    def cached(group: Mapping[str, Any], p: Tensor) -> StateSpec:
        if is_dtensor(p):
            return spec_of(group, p)
        key = (id(group), tuple(p.shape), p.stride(), p.dtype, p.device)
        if key not in memo:  # the group is kept with its spec: its id is not reused meanwhile
            memo[key] = (group, spec_of(group, p))
        return memo[key][1]

    return cached


def meta_like(p: Tensor) -> Tensor:
    """A stand-in of ``p`` on the meta device (shape, dtype, strides; no memory): a DTensor
    with ``p``'s mesh and placements for a DTensor ``p``, so that ``new_state`` makes the
    state's layout without allocating it."""
    local = p.to_local() if is_dtensor(p) else p  # type: ignore[attr-defined]
    meta = torch.empty_strided(local.shape, local.stride(), dtype=local.dtype, device="meta")
    if not is_dtensor(p):
        return meta
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(meta, p.device_mesh, p.placements,  # type: ignore[attr-defined]
                              run_check=False, shape=p.shape, stride=p.stride())


def new_step(p: Tensor) -> Tensor:
    """The step counter: a 0-dim float32 tensor on the CPU, as torch's optimizers keep it."""
    return torch.zeros((), dtype=torch.float32)
