"""Long-tailed gradients, the survey's diagnostic: per-layer tail statistics of the gradient
(always, at every evaluation step, into metrics.jsonl) and TensorBoard histograms of weights,
gradients and updates (with `--tensorboard DIR`).

Per block weight matrix (`model.prunable_weights`), of its gradient `g` after clipping (both
statistics are scale-free, so clipping and loss scaling do not change them):

* `kurtosis`: the excess kurtosis `E[(g - mean)^4] / var^2 - 3` (0 for a Gaussian, larger for
  heavier tails; 0 where `var = 0`);
* `p999_p50`: `q(0.999) / q(0.5)` of `|g|`, `q(p)` the nearest-rank quantile (the `ceil(p*n)`-th
  smallest; `None` where the median is 0).

The update logged to TensorBoard is `p_after - p_before` of the optimizer step (decay included).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from adamhd.distributed import is_dtensor
from adamhd.lab.model import prunable_weights

__all__ = ["Watch", "nearest_rank", "require_tensorboard", "tail_stats"]


def nearest_rank(x: torch.Tensor, q: float) -> float:
    """The ``ceil(q*n)``-th smallest entry of ``x`` (1-based; at least the first)."""
    flat = x.reshape(-1)
    k = min(flat.numel(), max(1, math.ceil(q * flat.numel())))
    return float(torch.kthvalue(flat, k).values)


def tail_stats(g: torch.Tensor) -> dict:
    """``kurtosis`` and ``p999_p50`` of one gradient (float64 arithmetic)."""
    x = g.detach().reshape(-1).to(torch.float64)
    centred = x - x.mean()
    var = float(centred.square().mean())
    kurtosis = float(centred.pow(4).mean()) / var**2 - 3.0 if var > 0 else 0.0
    a = x.abs()
    median = nearest_rank(a, 0.5)
    ratio = nearest_rank(a, 0.999) / median if median > 0 else None
    return {"kurtosis": kurtosis, "p999_p50": ratio}


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective for a sharded DTensor: every rank must call it)."""
    return t.full_tensor() if is_dtensor(t) else t  # type: ignore[attr-defined]


class Watch:
    """What the train loop calls around each optimizer step: `before(step)` (returns weight
    copies when the step is logged to TensorBoard) and `after(step, before, metrics)`.

    `every`: the steps whose statistics are recorded (the evaluation steps). `board`: a
    TensorBoard folder or "" for none; events at steps >= `start` are purged from an earlier,
    interrupted run (SummaryWriter's `purge_step`), so a resumed run logs each step once.
    """

    def __init__(self, model: torch.nn.Module, every: int, last: int, board: str | Path = "",
                 start: int = 0, main: bool = True):
        self.weights = prunable_weights(model)
        self.every, self.last, self.board = every, last, bool(board)
        self.writer = open_writer(board, start) if board and main else None

    def logged(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last

    def before(self, step: int) -> dict | None:
        if not self.board or not self.logged(step):  # every rank: _full may be a collective
            return None
        return {n: _full(w.detach()).clone() for n, w in self.weights.items()}

    def after(self, step: int, before: dict | None, metrics) -> None:
        if not self.logged(step):
            return
        grads = {n: _full(w.grad) for n, w in self.weights.items() if w.grad is not None}
        metrics.log({"kind": "tails", "step": step,
                     "layers": {n: tail_stats(g) for n, g in grads.items()}})
        if not self.board:
            return
        for name, w in self.weights.items():
            now = _full(w.detach())
            if self.writer is None:
                continue
            self.writer.add_histogram(f"weights/{name}", now, step)
            if name in grads:
                self.writer.add_histogram(f"grads/{name}", grads[name], step)
            if before is not None:
                self.writer.add_histogram(f"updates/{name}", now - before[name], step)
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def require_tensorboard():
    """torch's SummaryWriter, or a clear error if the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch's module imports the tensorboard package
        raise ValueError("--tensorboard needs the tensorboard package: "
                           "pip install 'adamhd[tensorboard]'") from e
    return SummaryWriter


def open_writer(folder: str | Path, start: int):
    return require_tensorboard()(log_dir=str(folder), purge_step=start if start > 0 else None)
