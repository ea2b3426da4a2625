"""``adamhd bench rules``: every contender runs, and the state it reports is the state each rule
is documented to keep (counted here by hand)."""

from __future__ import annotations

import pytest

from adamhd.bench import rules


def test_rules_bench_rows_and_state_bytes():
    rows = {name: (ms, ratio, extra) for name, ms, ratio, extra in
            rules.run(shapes=[(8, 6)], rounds=2, warmup=1)}
    assert list(rows) == list(rules.CONTENDERS)
    assert all(ms > 0 and ratio > 0 for ms, ratio, _ in rows.values())
    n = 8 * 6
    want = {
        "adam": 0, "l2": 0, "stable": 0,  # SWD keeps nothing: it reads Adam's v
        "huber": 4,  # delta_mu, float32
        "cpr": 3 * 4, "cpr cautious": 3 * 4,  # cpr_lambda, cpr_kappa, cpr_step
        "bound": 2 * 6 * 4 + 4,  # two float32 vectors of 6 columns, bound_ratio
        # Amos: step, v, b (3 x 4 bytes) instead of Adam's step (4), exp_avg, exp_avg_sq (2n x 4)
        "amos": 3 * 4 - (4 + 2 * n * 4),
    }
    for name, extra_bytes in want.items():
        assert rows[name][2] == pytest.approx(extra_bytes / n), name
