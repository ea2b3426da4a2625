"""Measurements on a model: loss / perplexity, weight statistics, magnitude pruning."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from adamhd.lab.data import eval_batches
from adamhd.lab.model import prunable_weights

# |w| thresholds for the "fraction of small weights" statistics (claim d)
SMALL_THRESHOLDS = (1e-3, 1e-2)
# log10|w| histogram bins: fixed, so histograms of runs and seeds can be summed
HIST_EDGES = np.linspace(-5.0, 0.5, 56)
# sparsities measured (then refined by bisection): coarse at the low end, where no model fails
PRUNE_GRID = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MAX_LOSS_RISE = 0.01


def autocast_for(device: torch.device, dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


@torch.no_grad()
def evaluate_loss(model, tokens: np.ndarray, *, context: int, batch_size: int,
                  max_windows: int = 0, device: torch.device, dtype: str = "float32",
                  subset_seed: int | None = None) -> float:
    """Mean cross-entropy in nats/token over windows of `tokens` (data.eval_starts): the full
    set of non-overlapping windows with max_windows 0, else a fixed (seeded) subset."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for x, y in eval_batches(tokens, context, batch_size, max_windows, subset_seed):
            x, y = x.to(device), y.to(device)
            with autocast_for(device, dtype):
                _, loss = model(x, y)
            total += float(loss) * y.numel()
            count += y.numel()
    finally:
        model.train(was_training)
    return total / count


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


@torch.no_grad()
def weight_stats(model) -> dict[str, dict[str, float]]:
    """Per prunable layer (and "all"): L2 norm, mean |w|, fraction of |w| below each threshold."""
    out = {}
    flat = []
    for name, w in prunable_weights(model).items():
        a = w.detach().float().abs()
        flat.append(a.flatten())
        out[name] = _stats(a)
    out["all"] = _stats(torch.cat(flat))
    return out


def _stats(a: torch.Tensor) -> dict[str, float]:
    d = {"norm": float(a.square().sum().sqrt()), "mean_abs": float(a.mean())}
    for t in SMALL_THRESHOLDS:
        d[f"frac_below_{t:g}"] = float((a < t).float().mean())
    return d


@torch.no_grad()
def magnitude_histogram(model) -> dict:
    """Counts of log10|w| over all prunable weights on the fixed HIST_EDGES (exact zeros apart)."""
    a = torch.cat([w.detach().float().abs().flatten() for w in prunable_weights(model).values()])
    zeros = int((a == 0).sum())
    logs = torch.log10(a[a > 0]).cpu().numpy()
    counts, _ = np.histogram(np.clip(logs, HIST_EDGES[0], HIST_EDGES[-1]), bins=HIST_EDGES)
    return {"edges": HIST_EDGES.tolist(), "counts": counts.tolist(), "zeros": zeros}


# ----------------------------------------------------------------------------------------------
# Magnitude pruning


def prune_masks(weights: dict[str, torch.Tensor], sparsity: float, mode: str):
    """Boolean keep-masks zeroing exactly round(sparsity * n) smallest |w|.

    mode "global": one ranking over all prunable weights together;
    mode "layer": each tensor loses the same fraction of its own weights.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if mode == "layer":
        masks = {}
        for name, w in weights.items():
            masks[name] = _keep_mask(w.detach().abs().flatten(), sparsity).view_as(w)
        return masks
    if mode != "global":
        raise ValueError(f"unknown pruning mode {mode!r}; choose global or layer")
    names = list(weights)
    flat = torch.cat([weights[n].detach().abs().flatten() for n in names])
    keep = _keep_mask(flat, sparsity)
    masks, offset = {}, 0
    for n in names:
        size = weights[n].numel()
        masks[n] = keep[offset : offset + size].view_as(weights[n])
        offset += size
    return masks


def _keep_mask(abs_flat: torch.Tensor, sparsity: float) -> torch.Tensor:
    k = round(sparsity * abs_flat.numel())
    keep = torch.ones_like(abs_flat, dtype=torch.bool)
    if k:
        # stable sort: ties broken by position, so the count pruned is exactly k
        order = torch.sort(abs_flat, stable=True).indices
        keep[order[:k]] = False
    return keep


@contextlib.contextmanager
def pruned(model, masks: dict[str, torch.Tensor]):
    """Temporarily zero the masked-out weights of `model`; restore them on exit."""
    weights = prunable_weights(model)
    saved = {n: weights[n].detach().clone() for n in masks}
    try:
        with torch.no_grad():
            for n, m in masks.items():
                weights[n].mul_(m.to(weights[n].dtype))
        yield model
    finally:
        with torch.no_grad():
            for n, w in saved.items():
                weights[n].copy_(w)


def max_sparsity_within(curve: list[tuple[float, float]], max_rise: float = MAX_LOSS_RISE) -> float:
    """Largest sparsity s such that the relative loss rise is <= max_rise at s and at every
    measured sparsity below s (so a lucky point past a failure does not count)."""
    base = dict(curve)[0.0]
    best = 0.0
    for s, loss in sorted(curve):
        if (loss - base) / base > max_rise:
            break
        best = s
    return best


def pruning_curve(model, eval_fn, mode: str, grid=PRUNE_GRID, refine: int = 3,
                  max_rise: float = MAX_LOSS_RISE) -> dict:
    """Loss after pruning at each sparsity of `grid`, refined by bisection (`refine` halvings)
    between the last passing and the first failing grid point. `eval_fn(model) -> loss`."""
    weights = prunable_weights(model)
    if 0.0 not in grid:
        grid = (0.0, *grid)
    curve: dict[float, float] = {}

    def measure(s: float) -> float:
        s = round(s, 6)
        if s not in curve:
            with pruned(model, prune_masks(weights, s, mode)):
                curve[s] = eval_fn(model)
        return curve[s]

    for s in sorted(grid):
        measure(s)
    lo = max_sparsity_within(sorted(curve.items()), max_rise)
    higher = [s for s in sorted(grid) if s > lo]
    if higher:
        hi = higher[0]
        for _ in range(refine):
            mid = (lo + hi) / 2
            base = curve[0.0]
            if (measure(mid) - base) / base <= max_rise:
                lo = mid
            else:
                hi = mid
    points = sorted(curve.items())
    best = max_sparsity_within(points, max_rise)
    return {"mode": mode, "sparsity": [s for s, _ in points], "loss": [v for _, v in points],
            "max_sparsity": best, "max_rise": max_rise}


def bytes_saved(n_prunable: int, n_total: int, sparsity: float, bytes_per_weight: int = 4) -> dict:
    """Memory saved by storing the pruned weights sparsely.

    `zeroed`: the bytes of the zeroed values alone (an upper bound: the positions must be stored).
    `net_bitmap`: stored as the kept values plus a 1-bit-per-weight mask, the simplest honest
    sparse format; negative when the sparsity is too low to pay for the mask.
    Fractions are of the whole model's parameter bytes.
    """
    dense = n_prunable * bytes_per_weight
    zeroed = sparsity * dense
    net = dense - ((1.0 - sparsity) * dense + n_prunable / 8.0)
    total = n_total * bytes_per_weight
    return {"zeroed_bytes": zeroed, "net_bitmap_bytes": net, "model_bytes": total,
            "zeroed_frac_of_model": zeroed / total, "net_frac_of_model": net / total}
