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
state per matrix. A step skipped by ``GradScaler`` (``found_inf``) is left alone. FSDP2 (weights
split by rows, ``Shard(0)``): each rank multiplies its rows; two all-reduces per power iteration
for all matrices together (4 per step with ``iters=2``), equal to one process.
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
    [sigma] = power_sigma1_many([m], [v], iters)
    return torch.tensor(sigma, dtype=v.dtype)


def power_sigma1_many(ms: list[Tensor], vs: list[Tensor], iters: int,
                      group: Any = None) -> list[float]:
    """``power_sigma1`` of several matrices at once. With ``group`` (a process group), each
    ``ms[i]`` is this rank's block of rows of a matrix split by rows across the group's ranks
    (FSDP2's ``Shard(0)``) and ``vs[i]`` the same on every rank: two all-reduces per iteration
    for all matrices together (the squared norms of ``m v``, then ``m^T u``)."""
    xs = [m.to(v.dtype) for m, v in zip(ms, vs)]
    ws = [v.clone() for v in vs]
    sigmas = [0.0] * len(ms)
    live = [True] * len(ms)
    for _ in range(iters):
        us = [x @ w for x, w in zip(xs, ws)]
        sq = torch.stack([u.square().sum() for u in us])
        if group is not None:
            torch.distributed.all_reduce(sq, group=group)
        norms = sq.sqrt().tolist()
        live = [ok and n > 0 for ok, n in zip(live, norms)]
        ys = [x.T @ (u / n) if ok else torch.zeros_like(w)
              for x, u, n, ok, w in zip(xs, us, norms, live, ws)]
        if group is not None:
            flat = torch.cat(ys)
            torch.distributed.all_reduce(flat, group=group)
            ys = list(flat.split([y.numel() for y in ys]))
        for i, y in enumerate(ys):
            if live[i]:
                sigmas[i] = float(torch.linalg.vector_norm(y))
                ws[i] = y / sigmas[i]
    for v, w, ok in zip(vs, ws, live):
        if ok:
            v.copy_(w)
    return [s if ok else 0.0 for s, ok in zip(sigmas, live)]


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

    def apply_(self, params: list[Tensor], befores: list[Tensor], states: list[dict[str, Any]],
               group: Any = None) -> None:
        """Bound the step ``p - p_t`` of each matrix in place (``params``: the local blocks of
        rows of the weights, ``befores``: copies of them before the step; their vectors in
        ``states``; ``group``: the process group the rows are split over, if any)."""
        for p, state in zip(params, states):
            for key in (V_WEIGHT, V_UPDATE):
                if key not in state:
                    state[key] = _start_vector(p)
        steps = [p - p_t for p, p_t in zip(params, befores)]
        n = len(params)
        sigmas = power_sigma1_many(befores + steps, [_f32(s, V_WEIGHT) for s in states]
                                   + [_f32(s, V_UPDATE) for s in states], self.iters, group)
        for p, p_t, step, state, s_w, s_u in zip(params, befores, steps, states, sigmas[:n],
                                                 sigmas[n:]):
            ratio = s_u / s_w if s_w > 0 else 0.0
            state[RATIO] = torch.tensor(ratio, dtype=torch.float32)
            factor = self.scale(ratio)
            if factor < 1.0:
                p.copy_(p_t.add_(step, alpha=factor))


def _f32(state: dict[str, Any], key: str) -> Tensor:
    """The state vector as float32 (after a ``load_state_dict`` that cast it to the weight's
    dtype, the float32 copy replaces it)."""
    v = state[key]
    if v.dtype not in (torch.float32, torch.float64):
        v = state[key] = v.float()
    return v


def _start_vector(p: Tensor) -> Tensor:
    """A fixed unit start vector per column count (the same on every run and rank)."""
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
        self._before = {p: _local(p).clone() for p in self.params if p.grad is not None}

    def _post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        before, self._before = self._before, {}
        batches: dict[Any, list[Tensor]] = {}
        for p in before:
            batches.setdefault(_row_group(p), []).append(p)
        with torch.no_grad():
            for group, ps in batches.items():
                self.bound.apply_([_local(p) for p in ps], [before[p] for p in ps],
                                  [optimizer.state[p] for p in ps], group)

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def _local(p: Tensor) -> Tensor:
    return (p.to_local() if is_dtensor(p) else p).detach()  # type: ignore[attr-defined]


def _row_group(p: Tensor) -> Any:
    """The process group a DTensor's rows are split over (``None`` for a plain tensor)."""
    if not is_dtensor(p):
        return None
    return p.device_mesh.get_group(0)  # type: ignore[attr-defined]


def _check_placement(p: Tensor) -> None:
    """Plain tensors, and DTensors split by rows on a 1-D mesh (FSDP2), are supported."""
    if not is_dtensor(p):
        return
    placements = p.placements  # type: ignore[attr-defined]
    if p.device_mesh.ndim != 1 or not (placements[0].is_replicate() or  # type: ignore
                                       (placements[0].is_shard() and placements[0].dim == 0)):
        raise ValueError("attach_update_bound: sharded weights must be split by rows on a 1-D "
                         f"mesh (FSDP2's Shard(0)); got {placements}")
    if placements[0].is_replicate():
        raise ValueError("attach_update_bound: replicated DTensor weights are not supported")


def attach_update_bound(
    optimizer: torch.optim.Optimizer,
    params: Iterable[Tensor] | None = None,
    threshold: float = 0.1,
    weight: float | None = None,
    iters: int = 2,
) -> BoundHandle:
    """Bound the step of ``params`` (default: every 2-D parameter of ``optimizer``) after each
    ``optimizer.step()``; see the module. ``ValueError`` for a parameter that is not 2-D, not in
    the optimizer, or a DTensor not split by rows on a 1-D mesh, before anything is attached."""
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
        _check_placement(p)
    return BoundHandle(optimizer, bound, chosen)
