"""An independent float64 reference of AdamHD, written from the paper's equations.

It shares no code with the package: plain tensors, one step at a time, no in-place tricks.
"""

from __future__ import annotations

import math

import torch


def huber(x: torch.Tensor, d: float) -> torch.Tensor:
    ax = x.abs()
    return torch.where(ax <= d, 0.5 * x * x, d * ax - 0.5 * d * d)


def prox_huber(q: torch.Tensor, tau: float, d: float) -> torch.Tensor:
    """The paper's closed form of argmin_z 0.5*(z-q)^2 + tau*H_d(z), as stated there."""
    return torch.where(q.abs() <= (1 + tau) * d, q / (1 + tau), q - tau * d * torch.sign(q))


class ReferenceAdamHD:
    """AdamHD for one tensor, in float64."""

    def __init__(
        self,
        p0: torch.Tensor,
        *,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=1e-2,
        delta="adaptive",
        delta_scale=1.5,
        delta_beta=0.99,
        decay_form="explicit",
        amsgrad=False,
        maximize=False,
    ):
        self.p = p0.detach().double().clone()
        self.m = torch.zeros_like(self.p)
        self.v = torch.zeros_like(self.p)
        self.vmax = torch.zeros_like(self.p)
        self.t = 0
        self.mu = None
        self.b1, self.b2 = betas
        self.eps = eps
        self.wd = weight_decay
        self.delta = delta
        self.scale = delta_scale
        self.beta_d = delta_beta
        self.form = decay_form
        self.amsgrad = amsgrad
        self.maximize = maximize

    def threshold(self) -> float:
        if self.delta != "adaptive":
            return self.delta
        a = self.p.abs().mean().item() if self.p.numel() else 0.0
        self.mu = a if self.mu is None else self.beta_d * self.mu + (1 - self.beta_d) * a
        return self.scale * self.mu

    def step(self, grad: torch.Tensor, lr: float) -> torch.Tensor:
        g = grad.double()
        if self.maximize:
            g = -g
        self.t += 1
        tau = lr * self.wd
        if self.wd != 0:
            d = self.threshold()
            if self.form == "explicit":
                clip = self.p if math.isinf(d) else torch.clamp(self.p, -d, d)
                self.p = self.p - tau * clip
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        self.vmax = torch.maximum(self.vmax, self.v)
        m_hat = self.m / (1 - self.b1**self.t)
        v_hat = (self.vmax if self.amsgrad else self.v) / (1 - self.b2**self.t)
        self.p = self.p - lr * m_hat / (v_hat.sqrt() + self.eps)
        if self.wd != 0 and self.form == "proximal":
            self.p = prox_huber(self.p, tau, d) if not math.isinf(d) else self.p / (1 + tau)
        return self.p
