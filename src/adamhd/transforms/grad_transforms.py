"""The gradient transforms: each one's math in one place, and the driver that applies one.

Every transform says which unit statistics it needs (``requests``) and how it rewrites a
gradient from them (``apply``). ``transform_grads`` gathers the statistics of all parameters
first (one all-reduce for sharded ones, ``adamhd.transforms.stats``) and then rewrites each
``p.grad`` in place. The statistics are float32 (float64 for float64 gradients); the rewrite is
computed in that precision and rounded once into the gradient's dtype.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor

from adamhd.transforms.stats import Request, local, statistics


class GradTransform(Protocol):
    name: ClassVar[str]

    def requests(self, p: Tensor, g: Tensor) -> tuple[Request, ...]: ...

    def apply(self, g: Tensor, stats: list[Tensor]) -> None: ...


def _check_positive(owner: str, **values: float) -> None:
    for key, value in values.items():
        if not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
            raise ValueError(f"{owner}: {key} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class Centralize:
    """Gradient centralisation (arXiv 2004.01461): ``g <- g - mean(g over all dims but 0)`` for
    ``g.dim() > 1``; vectors and scalars are left alone."""

    name: ClassVar[str] = "centralize"

    def requests(self, p: Tensor, g: Tensor) -> tuple[Request, ...]:
        return (Request(g, "mean", rows=True),) if g.dim() > 1 else ()

    def apply(self, g: Tensor, stats: list[Tensor]) -> None:
        if stats:
            g.sub_(stats[0])


@dataclass(frozen=True)
class AGC:
    """Adaptive gradient clipping, unit-wise (arXiv 2102.06171): per row (whole tensor if
    ``dim <= 1``) ``limit = clip*max(||p_i||, eps)``; where ``||g_i|| > limit``,
    ``g_i <- g_i*limit/max(||g_i||, 1e-6)``."""

    name: ClassVar[str] = "agc"
    clip: float = 0.01
    eps: float = 1e-3

    def __post_init__(self) -> None:
        _check_positive("agc", clip=self.clip, eps=self.eps)

    def requests(self, p: Tensor, g: Tensor) -> tuple[Request, ...]:
        return Request(p, "norm", rows=True), Request(g, "norm", rows=True)

    def apply(self, g: Tensor, stats: list[Tensor]) -> None:
        p_norm, g_norm = stats
        limit = p_norm.clamp_min(self.eps).mul_(self.clip)
        g.mul_(torch.where(g_norm > limit, limit / g_norm.clamp_min(1e-6), 1.0))


@dataclass(frozen=True)
class Normalize:
    """Gradient normalisation (the survey's sketch): ``g <- g/(||g|| + eps)``, whole tensor."""

    name: ClassVar[str] = "normalize"
    eps: float = 1e-8

    def __post_init__(self) -> None:
        _check_positive("normalize", eps=self.eps)

    def requests(self, p: Tensor, g: Tensor) -> tuple[Request, ...]:
        return (Request(g, "norm", rows=False),)

    def apply(self, g: Tensor, stats: list[Tensor]) -> None:
        g.div_(stats[0] + self.eps)


@dataclass(frozen=True)
class SoftClip:
    """The survey's soft clip: per row (whole tensor if ``dim <= 1``) ``r_p = max(rms(p), eps)``,
    ``r_g = max(rms(g), eps)``, ``g <- g*min(r_g, r_p)/r_g``: the gradient's RMS is capped at
    the weight's."""

    name: ClassVar[str] = "soft_clip"
    eps: float = 1e-12

    def __post_init__(self) -> None:
        _check_positive("soft_clip", eps=self.eps)

    def requests(self, p: Tensor, g: Tensor) -> tuple[Request, ...]:
        return Request(p, "rms", rows=True), Request(g, "rms", rows=True)

    def apply(self, g: Tensor, stats: list[Tensor]) -> None:
        r_p, r_g = (s.clamp_min(self.eps) for s in stats)
        g.mul_(r_g.clamp_max(r_p).div_(r_g))


@dataclass(frozen=True)
class LayerNormAdaptation:
    """The survey's LAMB-style layer adaptation (arXiv 1904.00962): ``g <- g*||p||/||g||`` over
    the whole tensor, unchanged when either norm is 0."""

    name: ClassVar[str] = "layer_norm_adaptation"

    def requests(self, p: Tensor, g: Tensor) -> tuple[Request, ...]:
        return Request(p, "norm", rows=False), Request(g, "norm", rows=False)

    def apply(self, g: Tensor, stats: list[Tensor]) -> None:
        w, n = stats
        g.mul_(torch.where((w > 0) & (n > 0), w / n, 1.0))


TRANSFORMS: dict[str, type] = {
    t.name: t for t in (Centralize, AGC, Normalize, SoftClip, LayerNormAdaptation)
}


def with_grads(params: Tensor | Iterable[Tensor]) -> list[Tensor]:
    """The parameters that have a gradient; sparse gradients are refused (before any change)."""
    params = [params] if isinstance(params, Tensor) else list(params)
    out = [p for p in params if p.grad is not None]
    for p in out:
        if p.grad.is_sparse:
            raise RuntimeError("adamhd.transforms: sparse gradients are not supported")
        if p.grad.shape != p.shape:
            raise RuntimeError(
                f"adamhd.transforms: gradient shape {tuple(p.grad.shape)} differs from its "
                f"parameter's {tuple(p.shape)}"
            )
    return out


@torch.no_grad()
def transform_grads(transform: GradTransform, params: Tensor | Iterable[Tensor]) -> None:
    """Apply ``transform`` in place to ``p.grad`` of each parameter in ``params`` that has one."""
    params = with_grads(params)
    per_param = [transform.requests(p, p.grad) for p in params]
    stats = iter(statistics([r for reqs in per_param for r in reqs]))
    for p, reqs in zip(params, per_param):
        transform.apply(local(p.grad), [next(stats) for _ in reqs])
