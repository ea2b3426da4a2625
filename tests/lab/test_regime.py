import math

import pytest

from adamhd.lab.regime import Regime, decay_budget, lr_sum, weight_decay_for
from adamhd.lab.train import RunConfig, lr_at


def brute_force_sum(cfg: RunConfig) -> float:
    return math.fsum(lr_at(step, cfg) for step in range(cfg.steps))


@pytest.mark.parametrize("steps, warmup, floor", [
    (1, None, 0.1), (2, 0, 0.1), (7, 7, 0.1), (10, 3, 0.0), (300, None, 0.1), (301, 17, 0.5),
    (1000, 0, 1.0), (5, 1, 0.1), (64, 64, 0.2),
])
def test_lr_sum_closed_form_equals_brute_force(steps, warmup, floor):
    cfg = RunConfig(steps=steps, warmup=warmup, lr=3e-3, min_lr_ratio=floor, weight_decay=0.5)
    assert lr_sum(cfg) == pytest.approx(brute_force_sum(cfg), rel=1e-12)
    assert decay_budget(cfg) == pytest.approx(0.5 * brute_force_sum(cfg), rel=1e-12)


@pytest.mark.parametrize("budget", [0.0, 0.05, 1.0, 3.0, 20.0])
def test_solver_hits_the_budget_by_summation(budget):
    cfg = RunConfig(steps=300, lr=3e-3)
    wd = weight_decay_for(budget, cfg)
    summed = math.fsum(lr_at(s, cfg) * wd for s in range(cfg.steps))
    assert summed == pytest.approx(budget, rel=1e-12, abs=1e-15)


def test_solver_rejects_bad_budgets():
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="decay-budget"):
            weight_decay_for(bad, RunConfig())


def test_regime_words():
    cfg = RunConfig(steps=200, lr=3e-3, weight_decay=0.1)
    r = Regime.of(cfg)
    assert r.name == "decay negligible" and r.timescale == pytest.approx(1 / 3e-4)
    assert "far longer than the run" in r.words()
    assert Regime.of(RunConfig(steps=200, lr=3e-3, weight_decay=weight_decay_for(
        0.3, cfg))).name == "decay partial"
    eq = Regime.of(RunConfig(steps=200, lr=3e-3, weight_decay=weight_decay_for(1.0, cfg)))
    assert eq.name == "decay at equilibrium" and "shrink a weight by 63.2%" in eq.words()
    assert Regime.of(RunConfig(weight_decay=0.0)).timescale == math.inf
