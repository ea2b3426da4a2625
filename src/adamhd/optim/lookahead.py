"""Lookahead (Zhang, Lucas, Hinton & Ba, arXiv 1907.08610): k steps forward, 1 step back.

Every ``k`` steps of the inner optimizer, per parameter group::

    slow <- slow + alpha*(fast - slow)        fast <- slow

``slow`` starts as a copy of the weights at the first step. Defaults ``k=5`` (the authors'
code) and ``alpha=0.5`` (the paper's experiments use 0.5 and 0.8 and report little difference;
the authors' code defaults to 0.8, pytorch_optimizer and timm to 0.5). Memory: one extra copy of
the weights.

Differences from pytorch_optimizer's ``Lookahead``: the sync covers every parameter of the group
(a parameter that got no gradient this step still moved in earlier ones), the step counter is
saved with the state (``lookahead_step`` in each param group), and the slow weights travel in the
same per-parameter entries of ``state_dict()`` as the inner optimizer's state (key
``lookahead_slow``), so a resumed run is bit-exact and the format is torch's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from adamhd.distributed import is_dtensor
from adamhd.state import check_layout

SLOW = "lookahead_slow"
COUNT = "lookahead_step"


def _local(t: Tensor) -> Tensor:
    return t.to_local() if is_dtensor(t) else t  # type: ignore[attr-defined]


class Lookahead(torch.optim.Optimizer):
    """Wraps ``optimizer``; shares its ``param_groups`` (so LR schedulers and GradScaler work on
    either object) and adds per-parameter slow weights.

    ``step`` runs the inner step, then syncs each group whose step count is a multiple of ``k``.
    Under FSDP2 the slow weights are DTensors sharded like the parameters (the sync is
    elementwise: no communication). With ``torch.amp.GradScaler``, ``scaler.step(lookahead)``
    unscales the gradients and skips the whole step (count included) on inf/NaN.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, k: int = 5, alpha: float = 0.5) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"Lookahead wraps a torch.optim.Optimizer, got {type(optimizer)}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"Lookahead: k must be an integer >= 1, got {k!r}")
        if not isinstance(alpha, (int, float)) or not 0.0 < alpha <= 1.0:
            raise ValueError(f"Lookahead: alpha must be in (0, 1], got {alpha!r}")
        # torch's own set-up (hooks, step wrapper; add_param_group is a no-op until
        # self.optimizer exists), then share the inner optimizer's list of groups.
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self.optimizer = optimizer
        self.k = k
        self.alpha = float(alpha)
        self.param_groups = optimizer.param_groups
        for group in self.param_groups:
            group.setdefault(COUNT, 0)

    @torch.no_grad()
    def _ensure_slow(self) -> None:
        """Slow weights start as the weights at the first step (or state_dict call). Created
        lazily, so that ``optimizer.state`` is empty until then, as torch.distributed.checkpoint
        expects of a fresh optimizer (it then initialises the state with a zero-gradient step)."""
        self._store_slow(self._missing_slow())

    @torch.no_grad()
    def _missing_slow(self) -> dict[Tensor, Tensor]:
        """Copies of the weights that have no slow weights yet (stored by ``_store_slow``)."""
        return {p: p.detach().clone() for group in self.param_groups for p in group["params"]
                if SLOW not in self.state.get(p, {})}

    def _store_slow(self, slow: dict[Tensor, Tensor]) -> None:
        for group in self.param_groups:
            group.setdefault(COUNT, 0)
        for p, value in slow.items():
            self.state[p][SLOW] = value

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "optimizer" not in self.__dict__:  # from Optimizer.__init__: the groups exist already
            return
        self.optimizer.add_param_group(param_group)
        self.param_groups[-1].setdefault(COUNT, 0)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        """The inner step with the same arguments (``loss=`` for ``AdaLo``, ...), then the sync.
        A step the inner optimizer refuses (it raises) leaves no slow weights and no count."""
        slow = self._missing_slow()  # the weights before this step, stored once it succeeded
        if closure is not None:
            loss = self.optimizer.step(closure, **kwargs)
        else:
            loss = self.optimizer.step(**kwargs)
        self._store_slow(slow)
        for group in self.param_groups:
            group[COUNT] += 1
            if group[COUNT] % self.k == 0:
                self._sync(group["params"])
        return loss

    @torch.no_grad()
    def _sync(self, params: list[Tensor]) -> None:
        if not params:
            return
        # elementwise, so DTensors (FSDP2) sync shard by shard on their local tensors
        slow = [_local(self.state[p][SLOW]) for p in params]
        fast = [_local(p.detach()) for p in params]
        torch._foreach_lerp_(slow, fast, self.alpha)
        torch._foreach_copy_(fast, slow)

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's ``state_dict`` with each parameter's slow weights added to its
        state entry (key ``lookahead_slow``) and the step count in each group."""
        self._ensure_slow()
        inner = self.optimizer.state_dict()
        state = {i: dict(s) for i, s in inner["state"].items()}
        ids = [i for g in inner["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(ids, params):
            state.setdefault(i, {})[SLOW] = self.state[p][SLOW]
        return {**inner, "state": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_layout(self, state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        saved = state_dict["state"]
        # saved parameter ids in group order (indices from state_dict(), names from DCP), as
        # torch's load_state_dict maps them
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        if len(saved_ids) != len(params):
            raise ValueError(
                f"Lookahead.load_state_dict: the state_dict has {len(saved_ids)} parameters, "
                f"this optimizer {len(params)}"
            )
        slow = {}
        for i, p in zip(saved_ids, params):
            entry = saved.get(i, {})
            if not isinstance(entry, dict) or SLOW not in entry:
                raise ValueError(
                    f"Lookahead.load_state_dict: parameter {i!r} has no {SLOW!r}; was this "
                    "state_dict saved by Lookahead?"
                )
            if tuple(entry[SLOW].shape) != tuple(p.shape):
                raise ValueError(
                    f"Lookahead.load_state_dict: slow weights of parameter {i!r} have shape "
                    f"{tuple(entry[SLOW].shape)}, the parameter {tuple(p.shape)}"
                )
            slow[p] = entry[SLOW]
        inner_state = {}
        for key, entry in saved.items():
            rest = {k: v for k, v in entry.items() if k != SLOW}
            if rest:
                inner_state[key] = rest
        groups = state_dict["param_groups"]
        if any(COUNT not in g for g in groups):
            raise ValueError(f"Lookahead.load_state_dict: a param group has no {COUNT!r}")
        self.optimizer.load_state_dict({**state_dict, "state": inner_state})
        self.param_groups = self.optimizer.param_groups  # torch rebuilds the list on load
        self._ensure_slow()
        with torch.no_grad():
            for p, value in slow.items():
                self.state[p][SLOW].copy_(value)

    def __getstate__(self) -> dict[str, Any]:  # torch's keeps only defaults/state/groups
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return f"Lookahead(k={self.k}, alpha={self.alpha}, {self.optimizer!r})"
