"""What every optimizer of ``adamhd.optim`` shares: checked hyperparameters, checked gradients,
and float statistics that stay float32 (float64 for float64 weights) across ``load_state_dict``.

Each optimizer module keeps its math in one plain function; its class only validates, builds
state and calls that function.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from adamhd.decay.threshold import statistic_dtype
from adamhd.distributed import is_dtensor

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


def finite_nonneg(name: str, value: Any) -> None:
    check(name, value, lambda v: 0.0 <= v < math.inf, "a finite number >= 0")


def in_unit(name: str, value: Any) -> None:
    check(name, value, lambda v: 0.0 <= v < 1.0, "0 <= value < 1")


def check_lr(group: dict[str, Any]) -> None:
    value = lr_value(group["lr"])
    if not 0.0 <= value < math.inf:
        raise ValueError(f"Invalid learning rate: lr={value} (must be finite and >= 0)")


class CheckedOptimizer(Optimizer):
    """A ``torch.optim.Optimizer`` that validates every group and the gradients before a step.

    Subclasses set ``name``, ``stat_keys`` (float state kept in ``stat_dtype``), ``dtensor_reason``
    (``None`` if sharded DTensor parameters are supported, else why not) and implement
    ``check_group``.
    """

    name = "optimizer"
    stat_keys: tuple[str, ...] = ()
    dtensor_reason: str | None = None

    def check_group(self, group: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        self.check_group(merged)
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        if self.dtensor_reason is not None and any(is_dtensor(p) for p in params):
            raise RuntimeError(
                f"{self.name} does not support DTensor (FSDP2 / tensor-parallel) parameters: "
                f"{self.dtensor_reason}"
            )
        super().add_param_group({**param_group, "params": params})

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

    # The step loop that the optimizers with one state dict per parameter share (Adafactor, SMMF,
    # SM3, AdaMomentum, FCAdam); NSGDA (all groups in one foreach batch) and AdaLo (the loss,
    # GradScaler) write their own ``step``.

    #: the record of one group's step hyperparameters; its fields are group keys
    hyper_type: ClassVar[type | None] = None

    def init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """``p``'s state, created on its first step."""
        raise NotImplementedError

    def group_step(
        self, params: list[Tensor], grads: list[Tensor], states: list[dict[str, Tensor]], hyper: Any
    ) -> None:
        """The optimizer's math on one group (its module's plain function)."""
        raise NotImplementedError

    def group_hyper(self, group: dict[str, Any]) -> Any:
        """``hyper_type`` from the group's values (``lr`` as a float)."""
        assert self.hyper_type is not None
        values = {f.name: group[f.name] for f in dataclasses.fields(self.hyper_type)}
        return self.hyper_type(**{**values, "lr": lr_value(group["lr"])})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step: the closure, the checks, then per group its state, gradients (negated for
        ``maximize``), hyperparameters and ``group_step``."""
        loss = run_closure(closure)
        self.check_grads()
        for group in self.param_groups:
            params = self.params_with_grad(group)
            if not params:
                continue
            states = [self.init_state(p, group) for p in params]
            grads = [-p.grad if group["maximize"] else p.grad for p in params]
            self.group_step(params, grads, states, self.group_hyper(group))
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, but the float statistics in ``stat_keys`` keep their saved precision and
        integer state (SMMF's packed signs) its dtype: torch casts every state tensor but
        ``step`` to the parameter's dtype."""
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        id_map = dict(zip(saved_ids, params))
        keep = {
            index: {k: v for k, v in s.items() if torch.is_tensor(v) and k != "step"
                    and (k in self.stat_keys or not v.is_floating_point())}
            for index, s in state_dict["state"].items()
        }
        super().load_state_dict(state_dict)
        for index, values in keep.items():
            p = id_map.get(index)
            if p is None:
                continue
            for key, value in values.items():
                dtype = stat_dtype(p) if key in self.stat_keys else value.dtype
                self.state[p][key] = value.to(device=p.device, dtype=dtype, copy=True)


def run_closure(closure: Callable[[], Any] | None) -> Any:
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def new_step(p: Tensor) -> Tensor:
    """The step counter: a 0-dim float32 tensor on the CPU, as torch's optimizers keep it."""
    return torch.zeros((), dtype=torch.float32)
