"""Loss statistics: a soft median of per-sample losses (the survey's sketch).

``soft_median(losses, temperature=None)``: sort the losses ``x_(0) <= ... <= x_(n-1)`` and
return ``sum_i w_i x_(i)`` with ``w = softmax(-|i - (n-1)/2| / T)``, ``T = max(0.1, 0.5*std(x))``
by default (unbiased std; ``T = 0.1`` for a single loss). Weights fall off with the distance in
rank from the middle, so outliers in value get little weight whatever their size. As ``T -> 0``
it is the median (for even ``n`` the mean of the two middle losses, as ``numpy.median`` and
``torch.quantile(x, 0.5)``; ``torch.median`` returns the lower one); as ``T -> inf``, the mean.

Differences from the survey's sketch, decided here:

* The sketch pads an even batch with a zero loss so that the middle is one element. The zero is
  a fake sample: it shifts the result toward 0 (for non-negative losses the ``T -> 0`` limit
  becomes the lower median) and breaks ``soft_median(x + c) = soft_median(x) + c``. Here an even
  batch keeps its half-integer middle ``(n-1)/2``: the two middle losses get equal weight.
* ``T`` is taken from the losses without gradient (``detach``): the gradient of the result with
  respect to each loss is then its rank weight ``w``, as for a weighted mean; the sketch also
  differentiated through ``std``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["soft_median"]


def soft_median(losses: Tensor, temperature: float | Tensor | None = None) -> Tensor:
    """Soft median of a 1-D tensor of per-sample losses (differentiable; see the module doc)."""
    if not isinstance(losses, Tensor) or losses.dim() != 1:
        raise ValueError("soft_median takes a 1-D tensor of per-sample losses")
    if losses.numel() == 0:
        raise ValueError("soft_median of an empty batch is undefined")
    if not losses.is_floating_point():
        raise TypeError(f"soft_median needs floating-point losses, got {losses.dtype}")
    n = losses.numel()
    if temperature is None:
        spread = 0.5 * losses.detach().std() if n > 1 else losses.new_zeros(())
        temperature = spread.clamp_min(0.1)
    elif not float(temperature) > 0:
        raise ValueError(f"soft_median: temperature must be > 0, got {temperature!r}")
    ranks = torch.arange(n, device=losses.device, dtype=losses.dtype)
    weights = torch.softmax(-(ranks - (n - 1) / 2).abs() / temperature, dim=0)
    return torch.dot(weights, torch.sort(losses).values)
