"""Shared by tests/optim: one entry per optimizer and helpers to step and snapshot it."""

from __future__ import annotations

import copy

import torch

from adamhd import NSGDA, SM3, SMMF, Adafactor, AdaLo, AdaMomentum, Amos, FCAdam

# name -> (class, keyword arguments that make every state and branch move in a few steps)
CASES = {
    "nsgda": (NSGDA, dict(lr=0.05, momentum=0.8, eps=1e-8, weight_decay=0.1)),
    "adalo": (AdaLo, dict(lr=2.0, betas=(0.8, 0.9), weight_decay=0.1, kappa=3.0, eps=1e-8)),
    "adafactor": (Adafactor, dict(lr=0.05, weight_decay=0.1)),
    "smmf": (SMMF, dict(lr=0.05, weight_decay=0.1)),
    "sm3": (SM3, dict(lr=0.05, momentum=0.5, weight_decay=0.1)),
    "adamomentum": (AdaMomentum, dict(lr=0.05, betas=(0.8, 0.9), weight_decay=0.1)),
    "fcadam": (FCAdam, dict(lr=0.05, betas=(0.8, 0.9), weight_decay=0.1, alpha=0.7, history=3,
                               drop=False)),
    "amos": (Amos, dict(lr=0.05, beta=0.9, weight_decay=0.01)),
}
SHAPES = [(5, 7), (3, 4, 6), (9,), ()]


def losses(n: int) -> list[float]:
    return [0.3 + 1.7 / (t + 1) for t in range(n)]


def grads_for(shape, n: int, seed: int = 0, dtype=torch.float64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for _ in range(n)]


def step(opt, loss: float = 1.0) -> None:
    if isinstance(opt, AdaLo):
        opt.step(loss=loss)
    else:
        opt.step()


def run(opt, params, grad_lists, loss_list=None) -> None:
    """Set each parameter's gradient to its next one and step, for every step."""
    for t in range(len(grad_lists[0])):
        for p, gs in zip(params, grad_lists):
            p.grad = gs[t].to(p.dtype).clone()
        step(opt, loss_list[t] if loss_list else 1.0)


def snapshot(params, opt):
    return copy.deepcopy(([p.detach().clone() for p in params], opt.state_dict()))


def assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].keys() == b[k].keys(), k
        for key in a[k]:
            x, y = a[k][key], b[k][key]
            assert x.dtype == y.dtype and torch.equal(x, y), (k, key)
