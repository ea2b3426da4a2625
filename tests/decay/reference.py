"""An independent float64 reference of an Adam step with a decoupled decay rule (test-only).

Written from the formulas (docs/decay.md), sharing no code with the package.
"""

from __future__ import annotations

import math

import torch


class ReferenceAdamDecay:
    """Adam (bias-corrected) with L2 or Huber decay, explicit or proximal, optionally cautious,
    strength lr*wd or (lr/initial_lr)*wd, adaptive threshold with the non-finite guard."""

    def __init__(self, p0, *, weight_decay, decay="huber", delta="adaptive", delta_scale=1.5,
                 delta_beta=0.99, decay_form="explicit", cautious_decay=False,
                 decay_scaling="lr", initial_lr=None, betas=(0.9, 0.999), eps=1e-8):
        self.p = p0.detach().double().clone()
        self.m = torch.zeros_like(self.p)
        self.v = torch.zeros_like(self.p)
        self.t = 0
        self.mu = math.nan
        self.wd, self.decay, self.delta = weight_decay, decay, delta
        self.scale, self.beta_d, self.form = delta_scale, delta_beta, decay_form
        self.cautious, self.scaling, self.initial_lr = cautious_decay, decay_scaling, initial_lr
        self.b1, self.b2 = betas
        self.eps = eps

    def threshold(self) -> float:
        if self.decay == "l2":
            return math.inf
        if self.delta != "adaptive":
            return self.delta
        a = self.p.abs().mean().item()
        if math.isfinite(a):
            self.mu = a if not math.isfinite(self.mu) else (
                self.beta_d * self.mu + (1 - self.beta_d) * a)
        return self.scale * self.mu if math.isfinite(self.mu) else math.inf

    def step(self, grad, lr: float) -> torch.Tensor:
        g = grad.double()
        self.t += 1
        tau = lr * self.wd if self.scaling == "lr" else lr / self.initial_lr * self.wd
        d = self.threshold() if self.wd != 0 else math.inf
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        u = (self.m / (1 - self.b1**self.t)) / ((self.v / (1 - self.b2**self.t)).sqrt() + self.eps)
        p = self.p
        if self.cautious:
            mask = ((u >= 0) & (p >= 0)) | ((u <= 0) & (p <= 0))
        else:
            mask = torch.ones_like(p, dtype=torch.bool)
        mask = mask.double()
        if self.form == "explicit":
            pull = p if math.isinf(d) else p.clamp(-d, d)
            self.p = p - tau * mask * pull - lr * u
        else:
            q = p - lr * u
            if math.isinf(d):
                prox = q / (1 + tau)
            else:
                prox = torch.where(q.abs() <= (1 + tau) * d, q / (1 + tau),
                                   q - tau * d * torch.sign(q))
            self.p = mask * prox + (1 - mask) * q
        return self.p
