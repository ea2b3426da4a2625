"""Gradient transforms for any torch optimizer: plain functions and ``attach``.

In a training loop, between ``backward()`` and ``step()``::

    adamhd.transforms.centralize(model.parameters())
    adamhd.transforms.agc(body_params, clip=0.01)

or once, for every step of an optimizer (in the order given)::

    handle = adamhd.transforms.attach(opt, ("centralize", {}), ("agc", {"exclude": ["head"]}),
                                      model=model)
    ...
    handle.remove()

Each function rewrites ``p.grad`` in place for the parameters that have a gradient. Formulas,
defaults, sources, FSDP2 behaviour and costs: ``docs/transforms.md``.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor

from adamhd.transforms.grad_transforms import (
    AGC,
    TRANSFORMS,
    Centralize,
    GradTransform,
    LayerNormAdaptation,
    Normalize,
    SoftClip,
    transform_grads,
)
from adamhd.transforms.hook import TransformHandle, attach

Params = Tensor | Iterable[Tensor]

__all__ = [
    "AGC",
    "TRANSFORMS",
    "Centralize",
    "GradTransform",
    "LayerNormAdaptation",
    "Normalize",
    "SoftClip",
    "TransformHandle",
    "agc",
    "attach",
    "centralize",
    "layer_norm_adaptation",
    "normalize",
    "soft_clip",
    "transform_grads",
]


def centralize(params: Params) -> None:
    """``g <- g - mean(g over all dims but 0)`` for gradients of ``dim > 1`` (arXiv 2004.01461)."""
    transform_grads(Centralize(), params)


def agc(params: Params, clip: float = 0.01, eps: float = 1e-3) -> None:
    """Unit-wise adaptive gradient clipping (arXiv 2102.06171); see ``AGC``."""
    transform_grads(AGC(clip=clip, eps=eps), params)


def normalize(params: Params, eps: float = 1e-8) -> None:
    """``g <- g/(||g|| + eps)`` per tensor."""
    transform_grads(Normalize(eps=eps), params)


def soft_clip(params: Params, eps: float = 1e-12) -> None:
    """Cap each row's gradient RMS at the weight row's RMS; see ``SoftClip``."""
    transform_grads(SoftClip(eps=eps), params)


def layer_norm_adaptation(params: Params) -> None:
    """``g <- g*||p||/||g||`` per tensor (1 when either norm is 0); see ``LayerNormAdaptation``."""
    transform_grads(LayerNormAdaptation(), params)
