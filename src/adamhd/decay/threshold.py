"""The adaptive Huber threshold ``d_t`` (arXiv 2511.14721): a per-tensor EMA of ``mean|p|``.

::

    a_t  = mean(|p_t|) over the whole tensor, before step t changes it
    mu_1 = a_1;   mu_t = lerp(mu_{t-1}, a_t, 1 - beta)   (= beta*mu_{t-1} + (1 - beta)*a_t)
    d_t  = scale * mu_t

Non-finite guard (not in the paper): a non-finite ``a_t`` (a NaN or inf weight) does not enter the
EMA (``mu_t = mu_{t-1}``), and a non-finite ``mu_{t-1}`` (no finite statistic seen yet) is replaced
by ``a_t``. While ``mu`` has no finite value the threshold is ``inf``: the rule is then AdamW's L2
decay. So one non-finite weight costs that one element, as in AdamW, and repairing it
(``nan_to_num_``) lets the threshold follow the weights again. All of this is tensor ops: no host
synchronisation, traceable by ``torch.compile``.

``mu`` is kept in float32 (float64 for float64 weights), whatever the weights' dtype.
Sharded (DTensor) parameters: the whole-tensor ``mean|p|`` is ``adamhd.distributed.whole_mean_abs``;
this module is purely local and imports only ``adamhd.decay.chunks`` (an execution detail).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

import adamhd.decay.chunks as _chunks

__all__ = [
    "statistic_dtype",
    "foreach_mean_abs",
    "foreach_update_adaptive_threshold",
    "guarded_ema",
    "mean_abs",
    "mu_dtype",
    "threshold_from_mu",
    "update_adaptive_threshold",
]


def statistic_dtype(t: Tensor) -> torch.dtype:
    """The library's one dtype policy for float statistics (this threshold's ``mu``, EMAs of
    scalars, factors, norms): float64 for a float64 tensor, else float32, also for bf16/fp16.
    ``adamhd.state`` keeps them in it across ``load_state_dict``."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


#: the dtype the threshold statistics are kept in
mu_dtype = statistic_dtype


def for_autograd(x: Tensor) -> Tensor:
    """``x``, or a copy of it when autograd records (``differentiable=True``).

    The decay updates ``x`` in place right after reading it; the ops that read it (``abs``,
    ``clamp``) keep their input for the backward pass, so they must see a copy.
    """
    return x.clone() if torch.is_grad_enabled() and x.requires_grad else x


def mean_abs(p: Tensor) -> Tensor:
    """``mean(|p|)`` of the (local) tensor as a 0-dim tensor (0 for an empty tensor)."""
    if p.numel() == 0:
        return torch.zeros((), dtype=mu_dtype(p), device=p.device)
    if _chunks.splits(p, above=_chunks.SUM_SPLIT_ABOVE):
        return (chunked_sum_abs(p) / p.numel()).to(mu_dtype(p))
    # torch's mean sums in cascade (accurate to ~1e-8 on millions of float32 elements), unlike
    # its CPU L1 norm, which drifts ~1e-4; it also measured faster than a float64 norm on CPU.
    return for_autograd(p).abs().mean(dtype=mu_dtype(p))


def chunked_sum_abs(p: Tensor) -> Tensor:
    """``sum(|p|)`` of a contiguous tensor as a 0-dim float64 tensor, without a weight-sized
    ``|p|``: ``|chunk|`` in one reused buffer, each chunk summed in torch's cascade (in
    ``mu_dtype(p)``, as ``mean`` sums), the chunk sums added in float64. At least as accurate as
    the whole tensor's cascade ``mean`` (``tests/decay/test_chunks.py``)."""
    parts = _chunks.chunks(p, _chunks.SUM_CHUNK_ELEMENTS)
    sums = torch.empty(len(parts), dtype=mu_dtype(p), device=p.device)
    scratch = torch.empty(parts[0].numel(), dtype=p.dtype, device=p.device)
    for i, part in enumerate(parts):
        magnitudes = scratch if part.numel() == scratch.numel() else scratch[: part.numel()]
        torch.sum(torch.abs(part, out=magnitudes), dim=0, dtype=sums.dtype, out=sums[i])
    return sums.sum(dtype=torch.float64)


def foreach_mean_abs(params: list[Tensor]) -> list[Tensor]:
    """``mean(|p|)`` for each tensor: one multi-tensor L1-norm kernel on accelerators; per tensor
    on CPU, where that kernel sums sequentially (~1e-4 relative drift over millions of elements)."""
    if params[0].is_cpu:
        return [mean_abs(p.detach()) for p in params]
    sums = torch._foreach_norm([p.detach() for p in params], 1, dtype=mu_dtype(params[0]))
    return torch._foreach_div(sums, [float(max(p.numel(), 1)) for p in params])


def guarded_ema(mu: Tensor, a: Tensor, beta: float) -> Tensor:
    """``lerp(mu, a, 1 - beta)`` with the non-finite guard (elementwise, any shape)::

        a not finite   -> mu        (the statistic does not enter the EMA)
        mu not finite  -> a         (the first finite statistic starts the EMA)
    """
    a = a.to(mu.dtype)
    moved = torch.lerp(mu, a, 1.0 - beta)
    return torch.where(a.isfinite(), torch.where(mu.isfinite(), moved, a), mu)


def threshold_from_mu(mu: Tensor, scale: float) -> Tensor:
    """``d_t = scale * mu_t``; ``inf`` (the L2 limit) while ``mu`` is not finite."""
    return torch.where(mu.isfinite(), mu * scale, math.inf)


def update_adaptive_threshold(mu: Tensor, abs_mean: Tensor, beta: float, scale: float) -> Tensor:
    """Advance the EMA ``mu`` in place with this step's ``mean|p|``; return ``d_t``.

    ``mu`` is created equal to ``a_1`` (see ``AdamHD``), so the first update leaves it at ``a_1``
    exactly (``lerp`` with equal ends returns that end).
    """
    mu.copy_(guarded_ema(mu, abs_mean, beta))
    return threshold_from_mu(mu, scale)


def foreach_update_adaptive_threshold(
    mus: list[Tensor], abs_means: list[Tensor], beta: float, scale: float
) -> list[Tensor]:
    """``update_adaptive_threshold`` for tensors whose ``mu`` share a device and dtype: the EMAs
    are stacked into one vector, so the step costs a handful of ops whatever the tensor count."""
    if not mus:
        return []
    new = guarded_ema(torch.stack(mus), torch.stack(abs_means), beta)
    torch._foreach_copy_(mus, list(new.unbind(0)))
    return list(threshold_from_mu(new, scale).unbind(0))
