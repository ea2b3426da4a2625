"""The decay regime of a run: how much decoupled weight decay can act over the whole run.

With the lab's schedule (train.lr_at: linear warmup, then cosine to min_lr_ratio * lr) and a
decay strength tau_t = lr_t * weight_decay per step (decay_scaling="lr", AdamW's convention):

    decay budget   B = sum_t lr_t * weight_decay    (a weight under decay alone shrinks by e^-B)
    timescale      T = 1 / (lr * weight_decay)      (steps for decay alone to shrink it by 1/e
                                                     at the peak lr)

B << 1 (T much longer than the run): decay barely acts and AdamW and AdamHD train the same model.
B around 1 or more (T at most the run length): the weights reach the balance between gradient
and decay, the regime of LLM pre-training (GPT-2/LLaMA-style runs have B of about 3 to 20),
where "over-decay" (the paper's motivation, arXiv 2511.14721) can happen at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from adamhd.lab.train import RunConfig


def lr_sum(cfg: RunConfig) -> float:
    """sum_{t < steps} lr_at(t, cfg) in closed form.

    Warmup (t < W): lr (t+1)/W sums to lr * m(m+1)/(2W) over its first m = min(W, steps) steps.
    Cosine (n = steps - W steps): floor + (lr - floor)(1 + cos(pi k/n))/2, and
    sum_{k<n} cos(pi k/n) = 1 for every n >= 1, so it sums to n*floor + (lr - floor)(n + 1)/2.
    """
    w = cfg.warmup_steps
    m = min(w, cfg.steps)
    total = cfg.lr * m * (m + 1) / (2 * w) if w > 0 else 0.0
    n = cfg.steps - m
    if n > 0:
        floor = cfg.lr * cfg.min_lr_ratio
        total += n * floor + (cfg.lr - floor) * (n + 1) / 2
    return total


def decay_budget(cfg: RunConfig) -> float:
    return lr_sum(cfg) * cfg.weight_decay


def weight_decay_for(budget: float, cfg: RunConfig) -> float:
    """The weight_decay giving decay budget `budget` with cfg's lr, schedule and steps."""
    if not (budget >= 0 and math.isfinite(budget)):
        raise ValueError(f"--decay-budget must be a finite number >= 0, got {budget}")
    return budget / lr_sum(cfg)


@dataclass(frozen=True)
class Regime:
    budget: float
    timescale: float  # steps, at the peak lr; inf without decay
    steps: int

    @classmethod
    def of(cls, cfg: RunConfig) -> Regime:
        rate = cfg.lr * cfg.weight_decay
        return cls(decay_budget(cfg), 1.0 / rate if rate > 0 else math.inf, cfg.steps)

    @property
    def name(self) -> str:
        budget = round(self.budget, 6)  # a budget solved for 1 is 1, not 0.9999999
        if budget < 0.1:
            return "decay negligible"
        if budget < 1.0:
            return "decay partial"
        return "decay at equilibrium"

    def words(self) -> str:
        shrink = 100 * (1 - math.exp(-self.budget))
        head = (f"Decay budget sum_t lr_t x weight_decay = {self.budget:.3g}: decay alone would "
                f"shrink a weight by {shrink:.1f}% over the run; decay timescale "
                f"1/(lr x weight_decay) = {self.timescale:.3g} steps at the peak lr, against a "
                f"run of {self.steps} steps. ")
        if self.name == "decay negligible":
            return head + ("Regime: **decay negligible**. The timescale is far longer than the "
                           "run, so AdamW and AdamHD, which differ only in the decay term, train "
                           "nearly the same model; a null result here says little about the "
                           "paper's claims.")
        if self.name == "decay partial":
            return head + ("Regime: **decay partial**. Decay acts, but the weights do not reach "
                           "the balance between gradient and decay; LLM pre-training runs sit "
                           "further out (budgets of about 3 to 20).")
        return head + ("Regime: **decay at equilibrium**. The timescale is at most the run "
                       "length, so the weights reach the balance between gradient and decay, "
                       "as in LLM pre-training (budgets of about 3 to 20), where over-decay, "
                       "the paper's motivation, can happen.")
