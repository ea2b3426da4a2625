"""Constrained Parameter Regularisation (CPR; Franke et al., arXiv 2311.09058, Algorithm 1, L2).

Instead of a penalty, each parameter tensor gets an upper bound ``kappa`` on ``R(p) = mean(p**2)``
and a Lagrange multiplier ``lam >= 0`` (per tensor), updated after the base optimizer's step on
``q`` (the weights after it; the base runs without weight decay)::

    lam <- max(0, lam + mu * (R(q) - kappa))
    q   <- q - 2 * lam * q                    (gradient of sum(q**2): the paper's code)

written ``q <- q * (1 - 2*lam*[mask])``. This is the paper's update with ``R = ||q||**2`` and rate
``mu/n`` (its code's ``kappa_update / numel``), ``kappa`` in units of ``mean(q**2)``. ``mu = 1``
(the paper's default). ``kappa`` is set by one of the paper's rules:

* ``"warm_start"`` (default): ``kappa = inf`` (no constraint, ``lam`` stays 0) for the first ``k``
  steps, then ``kappa = R(q)`` after step ``k`` (``k = kappa_param``, an int >= 0; the paper ties
  it to the warm-up length);
* ``"uniform"``: ``kappa = kappa_param`` for every tensor;
* ``"dependent"``: ``kappa = kappa_param * R(p_0)``, ``p_0`` the weights when the tensor's state
  is created (before the first step's update).

``cautious=True`` (arXiv 2510.12402's mask, as for the other rules): the pull acts only where the
base step's update ``u = p_t - q`` has the sign of ``p_t`` (``u*p_t >= 0``). State per tensor:
``cpr_lambda``, ``cpr_kappa``, ``cpr_step`` (0-dim float32, float64 for float64 weights). ``R`` of
a sharded (DTensor) tensor is summed across ranks: one all-reduce per step (``whole_sums``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
from torch import Tensor

from adamhd.decay.chunks import sweep
from adamhd.decay.rules import cautious_weights, is_number
from adamhd.decay.threshold import statistic_dtype
from adamhd.decay.whole import local, sum_squares, whole_sums

__all__ = [
    "CPR_DEFAULTS",
    "CPR_KAPPA_INITS",
    "CPR_STATE_KEYS",
    "CPRDecay",
    "check_cpr_options",
    "mean_squares",
]

CPR_KAPPA_INITS = ("warm_start", "uniform", "dependent")
CPR_STATE_KEYS = ("cpr_lambda", "cpr_kappa", "cpr_step")
#: per-group options of ``decay="cpr"`` (``with_decoupled_decay``)
CPR_DEFAULTS: dict[str, Any] = dict(cpr_mu=1.0, cpr_kappa_init="warm_start", cpr_kappa_param=1000)


def check_cpr_options(group: Mapping[str, Any]) -> None:
    """``ValueError`` naming the first invalid CPR key of ``group`` (missing keys: defaults)."""
    mu = group.get("cpr_mu", CPR_DEFAULTS["cpr_mu"])
    if not is_number(mu) or not 0.0 < mu < math.inf:
        raise ValueError(f"Invalid cpr_mu: {mu!r} (must be finite and > 0)")
    init = group.get("cpr_kappa_init", CPR_DEFAULTS["cpr_kappa_init"])
    if not isinstance(init, str) or init not in CPR_KAPPA_INITS:
        raise ValueError(f"Invalid cpr_kappa_init: {init!r} (one of {', '.join(CPR_KAPPA_INITS)})")
    param = group.get("cpr_kappa_param", CPR_DEFAULTS["cpr_kappa_param"])
    if init == "warm_start" and not (isinstance(param, int) and not isinstance(param, bool)
                                     and param >= 0):
        raise ValueError(f"Invalid cpr_kappa_param: {param!r} (warm_start: the step k, an int "
                         ">= 0)")
    if init != "warm_start" and (not is_number(param) or not 0.0 < param < math.inf):
        raise ValueError(f"Invalid cpr_kappa_param: {param!r} ({init}: finite and > 0)")


def mean_squares(params: list[Tensor]) -> list[Tensor]:
    """``mean(p**2)`` of each whole tensor (float64 0-dim; sharded ones: one all-reduce)."""
    sums = whole_sums(params, sum_squares(params))
    return [s / max(p.numel(), 1) for s, p in zip(sums, params)]


@dataclass(frozen=True)
class CPRDecay:
    """One group's CPR: ``mu``, the ``kappa`` rule and its parameter, and the cautious mask."""

    mu: float = 1.0
    kappa_init: str = "warm_start"
    kappa_param: float = 1000
    cautious: bool = False

    before_update: ClassVar[bool] = False  # acts on the weights after the base step

    @classmethod
    def from_group(cls, group: Mapping[str, Any]) -> CPRDecay:
        return cls(group.get("cpr_mu", 1.0), group.get("cpr_kappa_init", "warm_start"),
                   group.get("cpr_kappa_param", 1000), bool(group.get("cautious_decay", False)))

    def new_state(self, params: list[Tensor]) -> dict[Tensor, dict[str, Tensor]]:
        """First state of ``params`` (call with the weights before the first step)."""
        if not params:
            return {}
        if self.kappa_init == "dependent":
            kappas = [self.kappa_param * r for r in mean_squares(params)]
        else:
            value = math.inf if self.kappa_init == "warm_start" else float(self.kappa_param)
            kappas = [torch.tensor(value, dtype=torch.float64) for _ in params]
        out = {}
        for p, kappa in zip(params, kappas):
            def make(x: float | Tensor, p: Tensor = p) -> Tensor:
                return torch.as_tensor(x, dtype=statistic_dtype(p)).to(local(p).device).clone()

            out[p] = {"cpr_lambda": make(0.0), "cpr_kappa": make(kappa), "cpr_step": make(0.0)}
        return out

    def apply_(self, params: list[Tensor], states: list[dict[str, Tensor]],
               befores: list[Tensor] | None = None) -> None:
        """The CPR update of ``params`` (the weights after the base step) in place; ``befores``:
        copies of ``p_t`` for the cautious mask."""
        if not params:
            return
        rs = mean_squares(params)
        for i, (p, s, r) in enumerate(zip(params, states, rs)):
            lam = s["cpr_lambda"]
            lam.copy_((lam + self.mu * (r.to(lam) - s["cpr_kappa"])).clamp_min(0.0))
            two_lam = (2.0 * lam).to(p.dtype)
            if befores is None:
                local(p).mul_(1.0 - two_lam)
            else:  # chunk by chunk on large CPU tensors: the mask stays chunk-sized
                sweep(partial(_shrink_cautiously_, two_lam), local(p), local(befores[i]))
            if self.kappa_init == "warm_start" and int(s["cpr_step"]) == self.kappa_param:
                s["cpr_kappa"].copy_(torch.minimum(s["cpr_kappa"], r.to(lam)))
            s["cpr_step"].add_(1.0)


def _shrink_cautiously_(two_lam: Tensor, p: Tensor, p_t: Tensor) -> None:
    """``p <- p * (1 - 2*lam*mask)``, ``mask`` where the base step ``u = p_t - p`` has the sign
    of ``p_t`` (outside the mask ``p`` is unchanged, exactly)."""
    p.mul_(cautious_weights(p_t - p, p_t).mul_(-two_lam).add_(1.0))
