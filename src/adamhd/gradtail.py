"""GradTail's alignment signal (Chen et al., arXiv 2201.05938), restricted to a softmax head.

GradTail scores each sample by how its gradient agrees with a running average of the gradient
(a dot product, normalised) and up-weights the samples that disagree (the long tail). What is
built here is the score, without per-sample gradients of the whole model:

* **Approximation: the head only.** The gradient is that of the final linear layer's weight
  ``W`` (``logits = h W^T``, ``C`` classes, width ``d``) under cross-entropy. Sample ``i``'s
  gradient is the outer product ``g_i = e_i h_i^T`` with ``e_i = softmax(z_i) - onehot(y_i)``,
  so against a ``C x d`` reference ``G``: ``<g_i, G> = e_i^T G h_i`` and
  ``||g_i|| = ||e_i|| ||h_i||``. Cost ``O(n C d)`` (one more head-sized matmul), memory ``C x d``
  for ``G``; no backward per sample. A head bias is left out of the gradient.
* **The running average** (``GradTailState``): ``G <- beta G + (1 - beta) mean_i g_i``, the
  batch mean of the head gradients (``E^T H / n``); the first batch sets ``G`` to its mean (no
  zero start, no bias correction). The scores of a batch are taken against ``G`` *after* it
  has absorbed that batch, so the first step is well defined; both are decisions made here.
* ``cosine_i = <g_i, G> / (||g_i|| ||G||)``, 0 where a norm is 0. Rows with target
  ``ignore_index`` have ``e_i = 0`` (no gradient, as in ``F.cross_entropy``).

Not built: the paper's map from the score to a sample weight (its weighting function, its
normalisation and hyperparameters). Its text could not be read in the sessions that built this
(docs/momentum.md); a weight function without its source would be invented, not GradTail.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["GradTailState", "HeadAlignment", "head_gradient_alignment"]


class HeadAlignment(NamedTuple):
    """Per-sample scores of one batch: raw dot products ``<g_i, G>`` and cosines."""

    dots: Tensor
    cosines: Tensor


class GradTailState:
    """The running average ``G`` of the head's weight gradient, and its step count.

    ``G`` is float32 (float64 when the scores are computed from float64 inputs) on the inputs'
    device; ``state_dict``/``load_state_dict`` round-trip it exactly.
    """

    def __init__(self, beta: float = 0.9) -> None:
        if not 0.0 <= float(beta) < 1.0:
            raise ValueError(f"GradTailState: beta must be in [0, 1), got {beta!r}")
        self.beta = float(beta)
        self.mean: Tensor | None = None
        self.steps = 0

    def state_dict(self) -> dict:
        mean = None if self.mean is None else self.mean.clone()
        return {"beta": self.beta, "mean": mean, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        missing = {"beta", "mean", "steps"} - set(state)
        if missing:
            raise KeyError(f"GradTailState.load_state_dict: missing {sorted(missing)}")
        mean = state["mean"]
        if mean is not None and (not isinstance(mean, Tensor) or mean.dim() != 2):
            raise ValueError("GradTailState.load_state_dict: 'mean' must be None or a 2-D tensor")
        if not 0.0 <= float(state["beta"]) < 1.0:
            raise ValueError(f"GradTailState.load_state_dict: bad beta {state['beta']!r}")
        self.beta = float(state["beta"])
        keep = torch.float64 if mean is not None and mean.dtype == torch.float64 else torch.float32
        self.mean = None if mean is None else mean.detach().to(keep).clone()
        self.steps = int(state["steps"])

    def update(self, batch_mean: Tensor) -> Tensor:
        """Fold one batch's mean head gradient into ``G``; returns the new ``G``."""
        if self.mean is None:
            self.mean = batch_mean.clone()
        else:
            self.mean.mul_(self.beta).add_(batch_mean, alpha=1.0 - self.beta)
        self.steps += 1
        return self.mean


def _check(
    logits: Tensor, hidden: Tensor, targets: Tensor, state: GradTailState, ignore_index: int
) -> None:
    if not isinstance(state, GradTailState):
        raise TypeError("head_gradient_alignment: state must be a GradTailState")
    for name, t in (("logits", logits), ("hidden", hidden)):
        if not isinstance(t, Tensor) or t.dim() != 2 or not t.is_floating_point():
            raise ValueError(f"head_gradient_alignment: {name} must be a 2-D floating tensor")
    if not isinstance(targets, Tensor) or targets.dim() != 1 or targets.is_floating_point():
        raise ValueError("head_gradient_alignment: targets must be a 1-D integer tensor")
    n = logits.shape[0]
    if n == 0:
        raise ValueError("head_gradient_alignment: empty batch")
    if hidden.shape[0] != n or targets.shape[0] != n:
        raise ValueError(
            "head_gradient_alignment: batch sizes differ: logits "
            f"{n}, hidden {hidden.shape[0]}, targets {targets.shape[0]}"
        )
    classes = logits.shape[1]
    kept = targets[targets != ignore_index]
    if kept.numel() == 0:
        raise ValueError(f"head_gradient_alignment: every target is ignore_index={ignore_index}")
    if int(kept.min()) < 0 or int(kept.max()) >= classes:
        raise ValueError(
            f"head_gradient_alignment: targets must lie in [0, {classes}) or be ignore_index"
        )
    shape = (classes, hidden.shape[1])
    if state.mean is not None and tuple(state.mean.shape) != shape:
        raise ValueError(
            f"head_gradient_alignment: state holds a {tuple(state.mean.shape)} average, "
            f"this head's weight is {shape}"
        )


@torch.no_grad()
def head_gradient_alignment(
    logits: Tensor,
    hidden: Tensor,
    targets: Tensor,
    state: GradTailState,
    *,
    ignore_index: int = -100,
) -> HeadAlignment:
    """Alignment of each sample's head gradient with the running average (see the module doc).

    ``logits`` ``(n, C)`` and ``hidden`` ``(n, d)`` are the head's output and input (tokens
    flattened into rows), ``targets`` ``(n,)`` class indices. Rows whose target is
    ``ignore_index`` have no gradient, as in ``F.cross_entropy``: they score 0 and the batch mean
    is over the other rows. Updates ``state`` (after all checks pass) and returns the scores,
    float32 (float64 for float64 inputs).
    """
    _check(logits, hidden, targets, state, ignore_index)
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z, h = logits.detach().to(dtype), hidden.detach().to(dtype)
    kept = targets != ignore_index
    e = torch.softmax(z, dim=1) * kept.unsqueeze(1)
    e[kept.nonzero().squeeze(1), targets[kept]] -= 1.0
    if state.mean is not None:
        state.mean = state.mean.to(device=z.device, dtype=dtype)
    g = state.update(e.T @ h / kept.sum())
    dots = ((e @ g) * h).sum(dim=1)
    norms = e.norm(dim=1) * h.norm(dim=1) * g.norm()
    cosines = torch.where(norms > 0, dots / norms.clamp_min(torch.finfo(dtype).tiny), 0.0)
    return HeadAlignment(dots, cosines)
