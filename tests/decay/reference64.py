"""Independent float64 references of the decoupled decay rules (written from the formulas in
docs/decoupled-decay.md, not from the package), shared by the decay and optim tests."""

from __future__ import annotations

import torch
from torch import Tensor


class Threshold64:
    """Adaptive threshold: mu_1 = a_1, mu_t = beta*mu_{t-1} + (1-beta)*a_t, d_t = scale*mu_t."""

    def __init__(self, beta: float = 0.99, scale: float = 1.5) -> None:
        self.beta, self.scale, self.mu = beta, scale, None

    def __call__(self, p: Tensor) -> float:
        a = p.double().abs().mean().item()
        self.mu = a if self.mu is None else self.beta * self.mu + (1 - self.beta) * a
        return self.scale * self.mu


def explicit64(p: Tensor, tau: float, d: float, mask: Tensor | None = None) -> Tensor:
    """p - tau*clip(p, -d, d), only where ``mask``."""
    pull = p.clamp(-d, d)
    if mask is not None:
        pull = torch.where(mask, pull, torch.zeros_like(pull))
    return p - tau * pull


def proximal64(q: Tensor, tau: float, d: float, mask: Tensor | None = None) -> Tensor:
    """argmin_z 0.5*(z-q)^2 + tau*H_d(z) in closed form, only where ``mask``."""
    prox = torch.where(q.abs() <= (1 + tau) * d, q / (1 + tau), q - tau * d * q.sign())
    return prox if mask is None else torch.where(mask, prox, q)


def cautious_mask64(u: Tensor, p: Tensor) -> Tensor:
    """u*p >= 0 (a zero update still decays), from signs."""
    return u.sign() * p.sign() >= 0
