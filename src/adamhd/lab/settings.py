"""A sweep's settings and their analysis, pure functions of the result rows (one row per finished
run: entrant, lr, weight_decay, seed, final_val_loss): each entrant's best setting, its good
range of weight decays, and best vs best paired by seed. Used by the sweep report and the claims.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adamhd.lab.stats import INCONCLUSIVE, Summary, paired, power_note, verdict

GOOD_TOLERANCE = 0.01  # "good range": mean final loss within +1% of the entrant's best



@dataclass(frozen=True)
class Setting:
    entrant: str
    lr: float
    weight_decay: float


def by_setting(rows: list[dict]) -> dict[Setting, dict[int, float]]:
    """Setting -> {seed: final validation loss}."""
    out: dict[Setting, dict[int, float]] = {}
    for r in rows:
        out.setdefault(Setting(r["entrant"], r["lr"], r["weight_decay"]), {})[r["seed"]] = \
            r["final_val_loss"]
    return out


def best_setting(rows: list[dict], entrant: str, seeds: list[int]) -> Setting | None:
    """The entrant's setting with the lowest mean loss among those finished on every seed."""
    cells = {s: v for s, v in by_setting(rows).items()
             if s.entrant == entrant and set(seeds) <= set(v)}
    if not cells:
        return None
    return min(cells, key=lambda s: (float(np.mean([cells[s][k] for k in seeds])),
                                     s.weight_decay, s.lr))


def good_range(rows: list[dict], best: Setting, seeds: list[int],
               tolerance: float = GOOD_TOLERANCE) -> list[float]:
    """Weight decays, at the best setting's lr, whose mean loss is within +tolerance of the best
    (contiguous around the best on the grid: a lucky isolated point does not widen it)."""
    cells = {s.weight_decay: float(np.mean([v[k] for k in seeds]))
             for s, v in by_setting(rows).items()
             if s.entrant == best.entrant and s.lr == best.lr and set(seeds) <= set(v)}
    wds = sorted(cells)
    limit = cells[best.weight_decay] * (1 + tolerance)
    i = j = wds.index(best.weight_decay)
    while i > 0 and cells[wds[i - 1]] <= limit:
        i -= 1
    while j < len(wds) - 1 and cells[wds[j + 1]] <= limit:
        j += 1
    return wds[i:j + 1]


def best_vs_best(rows: list[dict], base: str, cand: str, seeds: list[int]):
    """(base best, cand best, Summary of base loss - cand loss per seed); positive: cand better."""
    b, c = best_setting(rows, base, seeds), best_setting(rows, cand, seeds)
    if b is None or c is None:
        return b, c, None
    cells = by_setting(rows)
    return b, c, paired([cells[b][k] for k in seeds], [cells[c][k] for k in seeds])


def best_vs_best_verdict(effect: Summary) -> tuple[str, str]:
    v, why = verdict(effect)
    if v == INCONCLUSIVE and effect.has_interval:
        why += "; " + power_note(effect)
    return v, why
