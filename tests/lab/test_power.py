import math

import pytest

from adamhd.lab.stats import Summary, power_note, seeds_needed, summarize, t_critical


def condition(n: int, mean: float, sd: float) -> bool:
    return math.sqrt(n) * abs(mean) / sd >= t_critical(n - 1) + 0.841621


@pytest.mark.parametrize("mean, sd", [(0.01, 0.01), (0.003, 0.02), (-0.5, 0.1), (1.0, 0.3)])
def test_seeds_needed_is_the_smallest_n_meeting_the_power_condition(mean, sd):
    n = seeds_needed(Summary(3, mean, mean - 1, mean + 1, sd))
    assert condition(n, mean, sd)
    assert n == 2 or not condition(n - 1, mean, sd)


def test_seeds_needed_in_the_normal_limit():
    # many seeds: n ~ ((z_0.975 + z_0.8) sd / mean)^2 = 7.849 (sd/mean)^2
    n = seeds_needed(Summary(3, 0.01, 0.0, 0.02, 0.1))
    assert n == pytest.approx(7.849 * 100, rel=0.02)


def test_no_estimate_without_spread_or_effect():
    assert seeds_needed(summarize([0.1])) is None
    assert seeds_needed(summarize([0.1, 0.1, 0.1])) is None
    assert seeds_needed(summarize([-0.1, 0.1])) is None
    assert "no estimate" in power_note(summarize([0.2, 0.2]))
    note = power_note(summarize([0.01, 0.03, -0.01]))
    assert "seeds would detect" in note and "this run had 3" in note
