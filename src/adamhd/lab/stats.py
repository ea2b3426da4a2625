"""Aggregation over seeds: mean and 95% Student-t interval, paired differences, verdicts."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

# Two-sided 95% critical values of Student's t, t_{0.975, df}, df = 1..30.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_Z975 = 1.959964


def t_critical(df: int) -> float:
    """t_{0.975, df}: the table up to 30, then the Cornish-Fisher expansion (error < 1e-3)."""
    if df < 1:
        raise ValueError("a t interval needs at least 2 samples (df >= 1)")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2))


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    low: float | None  # None when n < 2: no interval can be computed from one sample
    high: float | None
    sd: float | None

    @property
    def has_interval(self) -> bool:
        return self.low is not None

    def fmt(self, digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
        m = self.mean * scale
        if not self.has_interval:
            return f"{m:.{digits}f}{unit} (n={self.n}, no interval)"
        lo, hi = self.low * scale, self.high * scale
        return f"{m:.{digits}f}{unit} [{lo:.{digits}f}, {hi:.{digits}f}]"


def summarize(values) -> Summary:
    """Mean and 95% t-interval of independent samples (one per seed)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("nothing to summarize")
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return Summary(len(xs), mean, None, None, None)
    sd = statistics.stdev(xs)
    half = t_critical(len(xs) - 1) * sd / math.sqrt(len(xs))
    return Summary(len(xs), mean, mean - half, mean + half, sd)


def paired(a, b) -> Summary:
    """Summary of a_i - b_i over seeds i (a and b share the seed: data order and init)."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    return summarize(x - y for x, y in zip(a, b, strict=True))


SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
INCONCLUSIVE = "inconclusive at this scale"


def verdict(effect: Summary, claimed: float | None = None,
            paper_size: float | None = None) -> tuple[str, str]:
    """A plain verdict on an effect whose positive sign is the claimed direction.

    supported: the 95% interval lies above 0 (and, if `claimed` is given, reaches it);
    not supported: the interval lies below 0, or entirely below the claimed size;
    inconclusive: anything else, including n < 2 (no interval).
    `paper_size` (the paper's number, where it is an "up to" that sets no minimum) does not
    change the verdict, but a supported effect under a tenth of it is called tiny in the reason.
    Returns (verdict, reason).
    """
    if not effect.has_interval:
        return INCONCLUSIVE, f"one seed only (n={effect.n}): no interval, so no verdict"
    if effect.low == effect.high == 0:
        return INCONCLUSIVE, "no difference at all at the resolution measured"
    if effect.high < 0:
        return NOT_SUPPORTED, "the whole interval is on the wrong side of zero"
    if claimed is not None and effect.high < claimed:
        if effect.low > 0:
            return NOT_SUPPORTED, "an effect in the claimed direction, but smaller than claimed"
        return NOT_SUPPORTED, "the interval rules out an effect as large as claimed"
    if effect.low > 0:
        if paper_size is not None and effect.high < 0.1 * paper_size:
            return SUPPORTED, ("in direction only: the whole interval is above zero, but the "
                               "effect is under a tenth of the paper's")
        return SUPPORTED, "the whole interval is on the claimed side of zero"
    return INCONCLUSIVE, "the interval contains zero"


_Z80 = 0.841621  # one-sided z for 80% power


def seeds_needed(effect: Summary, limit: int = 10_000) -> int | None:
    """Seeds (pairs) needed to detect a true effect of the measured size with 80% power by a
    two-sided paired t-test at the 95% level: the smallest n with
    sqrt(n) * |mean| / sd >= t_{0.975, n-1} + z_{0.80}.

    The measured sd and mean stand in for the true ones (so this is a rough guide, not a
    guarantee); None if there is no spread to go on (n < 2, sd 0, or mean 0) or it exceeds limit.
    """
    if effect.sd is None or effect.sd == 0 or effect.mean == 0:
        return None
    ratio = abs(effect.mean) / effect.sd
    for n in range(2, limit + 1):
        if math.sqrt(n) * ratio >= t_critical(n - 1) + _Z80:
            return n
    return None


def power_note(effect: Summary) -> str:
    """One sentence for an inconclusive verdict: how many seeds the measured effect would need."""
    n = seeds_needed(effect)
    if n is None:
        return ("power: no estimate (no spread between seeds, or a zero effect): more seeds "
                "would not decide it")
    return (f"power: about {n} seeds would detect an effect of this size ({effect.mean:+.3g}, "
            f"seed-to-seed sd {effect.sd:.3g}) with 80% power at the 95% level; this run had "
            f"{effect.n}")
