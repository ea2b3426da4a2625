"""Update bound for training without warm-up (Qi et al., ICLR 2025, arXiv 2505.21910).

For each bounded 2-D weight, after the optimizer's step (``W_{t-1}`` the weight before it,
``dW_t = W_t - W_{t-1}`` the step the optimizer made, learning rate and decoupled decay
included)::

    r_t = sigma1(dW_t) / sigma1(W_{t-1})
    if r_t > threshold:   W_t <- W_{t-1} + (weight / r_t) * dW_t      (then sigma1 ratio = weight)

``sigma1`` (the largest singular value) by ``iters`` power-iteration steps per step, started from
the right singular vector kept from the previous step (state ``bound_v_weight`` for ``W``,
``bound_v_update`` for ``dW``; float32 vectors of the matrix's column count), so the estimate
sharpens over steps as long as the matrices change slowly. The estimate never exceeds the true
``sigma1``. ``weight`` defaults to ``threshold``: the bound is then a clip of the ratio at
``threshold``. (The paper's abstract: "bound the learning rate to a weighted multiple of
sigma1(W_{t-1})/sigma1(dW_t)"; the threshold and the weighting are ours, see docs/transforms.md.)

``attach_update_bound(optimizer, params)`` runs it around ``optimizer.step()`` of any torch
optimizer (step pre- and post-hooks). Cost: a copy of each bounded weight during the step (the
optimizer may overwrite ``W_{t-1}``), ``4*iters`` matrix-vector products per matrix, two vectors of
state per matrix. A step skipped by ``GradScaler`` (``found_inf``) is left alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from adamhd.distributed import is_dtensor

__all__ = ["BoundHandle", "UpdateBound", "attach_update_bound", "power_sigma1"]

V_WEIGHT, V_UPDATE, RATIO = "bound_v_weight", "bound_v_update", "bound_ratio"


def power_sigma1(m: Tensor, v: Tensor, iters: int) -> Tensor:
    """``sigma1(m)`` estimated by ``iters`` power iterations on ``m^T m`` from ``v`` (a unit
    vector of ``m.shape[1]`` entries, float32/64, updated in place to the new estimate of the
    top right singular vector). 0 for a zero matrix (``v`` then unchanged)."""
    x = m.to(v.dtype)
    sigma = torch.zeros((), dtype=v.dtype, device=v.device)
    w = v.clone()
    for _ in range(iters):
        u = x @ w
        u_norm = torch.linalg.vector_norm(u)
        if u_norm == 0:
            return sigma
        w = x.T @ (u / u_norm)
        sigma = torch.linalg.vector_norm(w)
        w = w / sigma
    v.copy_(w)
    return sigma


@dataclass(frozen=True)
class UpdateBound:
    """The rule: ``threshold`` (tau > 0), ``weight`` (alpha, 0 < alpha <= tau; default tau),
    ``iters`` (power iterations per matrix and step, >= 1)."""

    threshold: float = 0.1
    weight: float | None = None
    iters: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.threshold, int | float) or not 0 < self.threshold < math.inf:
            raise ValueError(f"update bound: threshold must be finite and > 0, got "
                             f"{self.threshold!r}")
        if self.weight is not None and not (isinstance(self.weight, int | float)
                                            and 0 < self.weight <= self.threshold):
            raise ValueError(f"update bound: weight must be in (0, threshold={self.threshold}], "
                             f"got {self.weight!r}")
        if not isinstance(self.iters, int) or isinstance(self.iters, bool) or self.iters < 1:
            raise ValueError(f"update bound: iters must be an int >= 1, got {self.iters!r}")

    def scale(self, ratio: float) -> float:
        """The factor on ``dW``: ``weight/ratio`` above the threshold, else 1."""
        alpha = self.threshold if self.weight is None else self.weight
        return alpha / ratio if ratio > self.threshold else 1.0

    def apply_(self, p: Tensor, p_t: Tensor, state: dict[str, Any]) -> None:
        """Bound the step ``p - p_t`` of one matrix in place; its vectors in ``state``."""
        for key in (V_WEIGHT, V_UPDATE):
            if key not in state:
                state[key] = _start_vector(p)
        step = p.detach() - p_t
        s_weight = float(power_sigma1(p_t, _f32(state, V_WEIGHT), self.iters))
        s_update = float(power_sigma1(step, _f32(state, V_UPDATE), self.iters))
        ratio = s_update / s_weight if s_weight > 0 else 0.0
        state[RATIO] = torch.tensor(ratio, dtype=torch.float32)
        factor = self.scale(ratio)
        if factor < 1.0:
            p.detach().copy_(p_t.add_(step, alpha=factor))


def _f32(state: dict[str, Any], key: str) -> Tensor:
    """The state vector as float32 (after a ``load_state_dict`` that cast it to the weight's
    dtype, the float32 copy replaces it)."""
    v = state[key]
    if v.dtype not in (torch.float32, torch.float64):
        v = state[key] = v.float()
    return v


def _start_vector(p: Tensor) -> Tensor:
    """A fixed unit start vector per column count (the same on every run: resumable)."""
    g = torch.Generator().manual_seed(p.shape[1])
    v = torch.randn(p.shape[1], generator=g, dtype=torch.float64)
    dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
    return (v / torch.linalg.vector_norm(v)).to(dtype=dtype, device=p.device)


class BoundHandle:
    """Returned by ``attach_update_bound``: ``remove()`` detaches the hooks."""

    def __init__(self, optimizer: torch.optim.Optimizer, bound: UpdateBound,
                 params: list[Tensor]) -> None:
        self.optimizer, self.bound, self.params = optimizer, bound, params
        self._before: dict[Tensor, Tensor] = {}
        self._hooks = [optimizer.register_step_pre_hook(self._pre),
                       optimizer.register_step_post_hook(self._post)]

    def _pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        found_inf = getattr(optimizer, "found_inf", None)
        if isinstance(found_inf, Tensor) and bool(found_inf.item()):
            self._before = {}
            return
        self._before = {p: p.detach().clone() for p in self.params if p.grad is not None}

    def _post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        before, self._before = self._before, {}
        with torch.no_grad():
            for p, p_t in before.items():
                self.bound.apply_(p, p_t, optimizer.state[p])

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def attach_update_bound(
    optimizer: torch.optim.Optimizer,
    params: Iterable[Tensor] | None = None,
    threshold: float = 0.1,
    weight: float | None = None,
    iters: int = 2,
) -> BoundHandle:
    """Bound the step of ``params`` (default: every 2-D parameter of ``optimizer``) after each
    ``optimizer.step()``; see the module. ``ValueError`` for a parameter that is not 2-D, not in
    the optimizer, or sharded (DTensor: not supported), before anything is attached."""
    bound = UpdateBound(threshold, weight, iters)
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    if params is None:
        chosen = [p for g in optimizer.param_groups for p in g["params"] if p.dim() == 2]
    else:
        chosen = list(params)
    for p in chosen:
        if id(p) not in held:
            raise ValueError("attach_update_bound: a parameter is not in the optimizer")
        if p.dim() != 2:
            raise ValueError(f"attach_update_bound: 2-D weights only, got shape {tuple(p.shape)}")
        if is_dtensor(p):
            raise ValueError("attach_update_bound: sharded (DTensor) weights are not supported")
    return BoundHandle(optimizer, bound, chosen)
