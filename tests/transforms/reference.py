"""Independent float64 references of the gradient transforms: explicit loops over units (rows of
a ``dim > 1`` tensor, else the whole tensor) with Python-float norms, written from the formulas
in the papers / the survey, not from the package."""

from __future__ import annotations

import math

from torch import Tensor


def units(t: Tensor, rows: bool) -> list[Tensor]:
    """Views of each unit of ``t`` (float64): its rows when ``rows`` and ``dim > 1``, else all."""
    if rows and t.dim() > 1:
        return [t[i] for i in range(t.shape[0])]
    return [t]


def _norm(x: Tensor) -> float:
    return math.sqrt(sum(v * v for v in x.reshape(-1).tolist()))


def _rms(x: Tensor) -> float:
    n = x.numel()
    return _norm(x) / math.sqrt(n) if n else 0.0


def centralize(g: Tensor, p: Tensor) -> Tensor:
    g = g.double().clone()
    if g.dim() > 1:
        for row in units(g, rows=True):
            values = row.reshape(-1).tolist()
            if values:
                row -= sum(values) / len(values)
    return g


def agc(g: Tensor, p: Tensor, clip: float = 0.01, eps: float = 1e-3) -> Tensor:
    g, p = g.double().clone(), p.double()
    for gu, pu in zip(units(g, True), units(p, True)):
        limit = clip * max(_norm(pu), eps)
        gn = _norm(gu)
        if gn > limit:
            gu *= limit / max(gn, 1e-6)
    return g


def normalize(g: Tensor, p: Tensor, eps: float = 1e-8) -> Tensor:
    g = g.double().clone()
    return g / (_norm(g) + eps)


def soft_clip(g: Tensor, p: Tensor, eps: float = 1e-12) -> Tensor:
    g, p = g.double().clone(), p.double()
    for gu, pu in zip(units(g, True), units(p, True)):
        r_p, r_g = max(_rms(pu), eps), max(_rms(gu), eps)
        gu *= min(r_g, r_p) / r_g
    return g


def layer_norm_adaptation(g: Tensor, p: Tensor) -> Tensor:
    g = g.double().clone()
    w, n = _norm(p.double()), _norm(g)
    return g * (w / n) if w > 0 and n > 0 else g


REFERENCES = {
    "centralize": centralize,
    "agc": agc,
    "normalize": normalize,
    "soft_clip": soft_clip,
    "layer_norm_adaptation": layer_norm_adaptation,
}
