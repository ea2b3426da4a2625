"""``attach``: run gradient transforms, in order, before every ``optimizer.step()``.

The transforms run in a step pre-hook (``Optimizer.register_step_pre_hook``), so they work with
any ``torch.optim.Optimizer`` and see the gradients of every parameter group at step time
(groups added later included). ``torch.amp.GradScaler``: ``scaler.step(optimizer)`` unscales the
gradients before calling ``step`` unless the optimizer unscales inside its own step (torch's and
AdamHD's ``fused=True``: GradScaler then sets ``optimizer.grad_scale``); in that case the hook
raises and asks for ``scaler.unscale_(optimizer)`` first, since a norm or a clip of scaled
gradients is wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from adamhd.transforms.grad_transforms import TRANSFORMS, GradTransform, transform_grads

Spec = str | tuple[str, Mapping[str, Any]] | GradTransform


@dataclass(frozen=True)
class Stage:
    """One attached transform and the parameters it leaves alone."""

    transform: GradTransform
    exclude: tuple[Tensor, ...] = ()

    def run(self, optimizer: torch.optim.Optimizer) -> None:
        skip = {id(p) for p in self.exclude}
        params = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in skip]
        transform_grads(self.transform, params)


class TransformHandle:
    """Returned by ``attach``: ``remove()`` detaches the transforms (also on leaving a ``with``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, stages: tuple[Stage, ...]) -> None:
        self.optimizer = optimizer
        self.stages = stages
        self._hook = optimizer.register_step_pre_hook(self._pre_step)

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if getattr(optimizer, "grad_scale", None) is not None:
            raise RuntimeError(
                "adamhd.transforms: the gradients are still scaled by torch.amp.GradScaler "
                "(this optimizer unscales inside its fused step); call "
                "scaler.unscale_(optimizer) before scaler.step(optimizer)"
            )
        for stage in self.stages:
            stage.run(optimizer)

    def remove(self) -> None:
        self._hook.remove()

    def __enter__(self) -> TransformHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"TransformHandle({[s.transform for s in self.stages]})"


def _excluded(items: Iterable[Tensor | str], model: nn.Module | None) -> tuple[Tensor, ...]:
    """Parameters named by tensor, by name or by module prefix (``"head"`` -> ``head.*``)."""
    if isinstance(items, (str, Tensor)):
        items = [items]
    named = dict(model.named_parameters()) if model is not None else {}
    out: list[Tensor] = []
    for item in items:
        if isinstance(item, Tensor):
            out.append(item)
            continue
        if not isinstance(item, str):
            raise TypeError(f"exclude takes parameters or names, got {type(item).__name__}")
        if model is None:
            raise ValueError(f"exclude={item!r} names a parameter: pass model= to resolve it")
        hits = [p for n, p in named.items() if n == item or n.startswith(item + ".")]
        if not hits:
            raise ValueError(f"exclude={item!r} matches no parameter or module of the model")
        out += hits
    return tuple(out)


def _stage(spec: Spec, options: Mapping[str, Any], model: nn.Module | None) -> Stage:
    if isinstance(spec, tuple):
        if len(spec) != 2 or not isinstance(spec[1], Mapping):
            raise TypeError(f"a transform is a name, (name, options) or an instance; got {spec!r}")
        if options:
            raise TypeError("give the options either in the (name, options) pair or as keywords")
        spec, options = spec
    options = dict(options)
    exclude = _excluded(options.pop("exclude", ()), model)
    if isinstance(spec, str):
        if spec not in TRANSFORMS:
            raise ValueError(f"unknown transform {spec!r}; known: {', '.join(TRANSFORMS)}")
        try:
            return Stage(TRANSFORMS[spec](**options), exclude)
        except TypeError as err:
            raise TypeError(f"transform {spec!r}: {err}") from None
    if hasattr(spec, "requests") and hasattr(spec, "apply"):
        if options:
            raise TypeError("options go into the transform's constructor, not to attach()")
        return Stage(spec, exclude)
    raise TypeError(f"a transform is a name, (name, options) or an instance; got {spec!r}")


def attach(
    optimizer: torch.optim.Optimizer,
    *transforms: Spec,
    model: nn.Module | None = None,
    **options: Any,
) -> TransformHandle:
    """Run ``transforms`` in the given order on the gradients before every ``optimizer.step()``.

    ``attach(opt, "agc", clip=0.01, exclude=["head"], model=model)`` attaches one transform
    with its options; ``attach(opt, ("centralize", {}), ("agc", {"clip": 0.02}))`` several, in
    order; instances (``adamhd.transforms.AGC(clip=0.02)``) are accepted too. ``exclude``
    exempts parameters given as tensors or as names (exact, or a module prefix) of ``model``.
    Everything is validated before the hook is registered. Returns a handle; ``remove()``
    detaches it.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"attach needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not transforms:
        raise ValueError("attach needs at least one transform")
    if options and len(transforms) > 1:
        raise TypeError("with several transforms, give each its options as (name, {...})")
    stages = tuple(_stage(spec, options, model) for spec in transforms)
    return TransformHandle(optimizer, stages)
