import math

import pytest

from adamhd.lab.claims import crossing
from adamhd.lab.stats import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    paired,
    summarize,
    t_critical,
    verdict,
)


def test_t_critical_values():
    assert t_critical(1) == 12.706
    assert t_critical(2) == 4.303
    assert t_critical(30) == 2.042
    assert t_critical(60) == pytest.approx(2.0003, abs=1e-3)
    assert t_critical(120) == pytest.approx(1.9799, abs=1e-3)
    with pytest.raises(ValueError):
        t_critical(0)


def test_summarize_known_numbers():
    s = summarize([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.sd == 1.0
    half = 4.303 / math.sqrt(3)
    assert s.low == pytest.approx(2.0 - half) and s.high == pytest.approx(2.0 + half)
    assert s.fmt(2) == f"2.00 [{2 - half:.2f}, {2 + half:.2f}]"


def test_one_sample_has_no_interval():
    s = summarize([5.0])
    assert not s.has_interval and s.low is None and s.high is None
    assert "no interval" in s.fmt()
    assert verdict(s)[0] == INCONCLUSIVE


def test_paired_differences():
    s = paired([3.0, 5.0, 7.0], [1.0, 2.0, 3.0])  # differences 2, 3, 4
    assert s.mean == 3.0 and s.sd == 1.0
    with pytest.raises(ValueError):
        paired([1.0], [1.0, 2.0])


def test_verdicts():
    assert verdict(summarize([1.0, 1.1, 0.9]))[0] == SUPPORTED
    assert verdict(summarize([-1.0, -1.1, -0.9]))[0] == NOT_SUPPORTED
    assert verdict(summarize([-1.0, 1.0, 0.1]))[0] == INCONCLUSIVE
    # in the claimed direction but clearly smaller than the claimed size
    assert verdict(summarize([0.02, 0.021, 0.019]), claimed=0.10)[0] == NOT_SUPPORTED
    assert verdict(summarize([0.12, 0.13, 0.11]), claimed=0.10)[0] == SUPPORTED
    v, why = verdict(summarize([0.003, 0.0031, 0.0029]), paper_size=4.0)
    assert v == SUPPORTED and "in direction only" in why
    assert verdict(summarize([0.0, 0.0, 0.0]))[0] == INCONCLUSIVE


def test_crossing_interpolates():
    evals = [{"step": 0, "time": 0.0, "val_loss": 5.0},
             {"step": 10, "time": 2.0, "val_loss": 3.0},
             {"step": 20, "time": 4.0, "val_loss": 2.0}]
    assert crossing(evals, 2.5, "step") == pytest.approx(15.0)
    assert crossing(evals, 2.5, "time") == pytest.approx(3.0)
    assert crossing(evals, 6.0, "step") == 0.0
    assert crossing(evals, 1.0, "step") is None
