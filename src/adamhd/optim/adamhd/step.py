"""The two records of one AdamHD step, built once per param group and step.

* ``AdamStep``: the hyperparameters (one typed record instead of a long keyword list);
* ``AdamTensors``: the group's tensor lists (parameters, gradients, state), index-aligned.

The single-tensor, foreach and rule paths (``adamhd.optim.adamhd.functional``, ``rule_step``) and
the fused kernels (``adamhd.kernels``, CPU and Triton) all take them. A new per-parameter state
list is one field of ``AdamTensors``. ``on_lists`` gives a function of the record the calling
convention of ``adamhd.functional.adamhd`` (the lists one by one, in field order).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from torch import Tensor

from adamhd._torch_compat import to_scalar as _to_scalar
from adamhd.decay import DecayRule, group_decay_coefficient, rule_from_group
from adamhd.optim.adamhd.update_rules import UpdateRule

__all__ = ["AdamStep", "AdamTensors", "on_lists"]


@dataclass(frozen=True)
class AdamStep:
    """Hyperparameters of one step.

    ``weight_decay`` is the decay coefficient ``c`` with ``tau = lr * c``: the group's
    ``weight_decay``, divided by ``initial_lr`` for ``decay_scaling="schedule"``
    (``adamhd.decay.strength``).
    """

    decay: DecayRule
    lr: float | Tensor
    beta1: float | Tensor  # a 0-dim Tensor where the group's betas are Tensors
    beta2: float | Tensor
    eps: float
    weight_decay: float
    amsgrad: bool = False
    maximize: bool = False
    capturable: bool = False
    differentiable: bool = False
    update: UpdateRule = UpdateRule()

    @property
    def decays(self) -> bool:
        return self.weight_decay != 0

    @classmethod
    def from_group(cls, group: Mapping[str, Any]) -> AdamStep:
        """The step a (validated) AdamHD param group asks for."""
        beta1, beta2 = (_to_scalar(b) for b in group["betas"])  # 1-element Tensors as 0-dim
        return cls(
            decay=rule_from_group(group),
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group_decay_coefficient(group),
            amsgrad=group.get("amsgrad", False),
            maximize=group.get("maximize", False),
            capturable=group.get("capturable", False),
            differentiable=group.get("differentiable", False),
            update=UpdateRule.from_group(group),
        )


@dataclass
class AdamTensors:
    """A param group's tensors for one step, as lists aligned with ``params``.

    ``max_exp_avg_sqs`` is empty without ``amsgrad``; ``delta_mus`` (the adaptive threshold's EMA
    per tensor) is empty for a fixed threshold or L2 decay. Iterating gives the lists in this
    order (the order of ``adamhd.functional.adamhd``'s arguments and of the fused op's).
    """

    params: list[Tensor] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)
    exp_avgs: list[Tensor] = field(default_factory=list)
    exp_avg_sqs: list[Tensor] = field(default_factory=list)
    max_exp_avg_sqs: list[Tensor] = field(default_factory=list)
    state_steps: list[Tensor] = field(default_factory=list)
    delta_mus: list[Tensor] = field(default_factory=list)

    def lists(self) -> tuple[list[Tensor], ...]:
        """The seven lists in field order (spelled out: ``torch.compile`` traces this)."""
        return (self.params, self.grads, self.exp_avgs, self.exp_avg_sqs, self.max_exp_avg_sqs,
                self.state_steps, self.delta_mus)

    def __iter__(self) -> Iterator[list[Tensor]]:
        return iter(self.lists())

    def __len__(self) -> int:
        return len(self.params)

    def select(self, index: Sequence[int]) -> AdamTensors:
        """The tensors at positions ``index`` (an empty list stays empty)."""
        return AdamTensors(*[[xs[i] for i in index] if xs else [] for xs in self.lists()])


def on_lists(step: Callable[..., None], name: str, doc: str) -> Callable[..., None]:
    """``step(tensors, hyper, **options)`` as the function ``name`` (in ``step``'s module), called
    as ``adamhd.functional.adamhd`` is: the lists of ``AdamTensors`` one by one (positional or by
    name, in field order), ``hyper``, then ``step``'s keyword options; ``inspect.signature`` says
    so."""
    names = tuple(f.name for f in fields(AdamTensors))
    rest = list(inspect.signature(step).parameters.values())[1:]
    lists = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                               annotation="list[Tensor]") for n in names]
    signature = inspect.Signature([*lists, *rest], return_annotation="None")

    def call(*args: Any, **options: Any) -> None:
        if len(args) != len(names) + 1 or any(n in options for n in names):
            options = dict(signature.bind(*args, **options).arguments)
            args = tuple(options.pop(n) for n in (*names, rest[0].name))
        step(AdamTensors(*args[:-1]), args[-1], **options)

    call.__name__ = call.__qualname__ = name
    call.__module__, call.__doc__ = step.__module__, doc
    call.__signature__ = signature  # type: ignore[attr-defined]
    return call
