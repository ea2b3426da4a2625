"""Update rules of the Adam family: how the moments become the step direction ``u``.

``p <- p - lr*u`` (decay aside; ``adamhd.decay``). Per tensor, from the bias-corrected moments
``m_hat = m/(1-beta1**t)`` and ``v_hat = v/(1-beta2**t)``:

=============  =====================================================  ==========================
``update=``    ``u``                                                  source, defaults
=============  =====================================================  ==========================
``"adam"``     ``m_hat / (sqrt(v_hat) + eps)``                        Adam (default)
``"atan2"``    ``a * atan2(m_hat, b*sqrt(v_hat))``, no ``eps``        arXiv 2407.05872; a=1.27, b=1
``"softplus"`` ``m_hat / softplus_beta(sqrt(v_hat))``, no ``eps``     arXiv 1908.00700; beta=50
=============  =====================================================  ==========================

``softplus_beta(x) = log1p(exp(beta*x))/beta`` (torch's ``softplus``, which returns ``x`` where
``beta*x > 20``: a difference below ``2e-9/beta``).

Options, applied in this order (each documented at its function):

* ``adanorm`` (arXiv 2210.06364): the first moment takes ``g*max(1, e/||g||)``, ``e`` an EMA of
  ``||g||`` (0.95); ``v`` takes the raw ``g``. State: ``adanorm_e`` (a float statistic).
* ``diffgrad`` (arXiv 1909.11015, v2): ``m_hat <- m_hat * sigmoid(|g_{t-1} - g_t|)``. State:
  ``prev_grad`` (the previous step's gradient; zeros before the first step, as the authors').
* ``cautious`` (arXiv 2411.16085): ``u <- u * 1[u*g > 0] / max(mean(1[u*g > 0]), 1e-3)``.
* ``trust_ratio`` (LAMB, arXiv 1904.00962): ``u <- u * ||p||/||u||``, 1 when either norm is 0.

Norms and means are of the whole tensor (sharded DTensors: one all-reduce per statistic kind for
all tensors, ``adamhd.transforms.stats``). The functions here are the only definition of the math;
``adamhd.functional_rules`` runs them on the single-tensor and foreach paths.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ADANORM_GAMMA",
    "CAUTIOUS_MIN_FRACTION",
    "UPDATES",
    "UPDATE_DEFAULTS",
    "UpdateRule",
    "adanorm_scale_",
    "cautious_",
    "check_update_options",
    "diffgrad_factor",
    "direction",
    "trust_ratio",
]

UPDATES = ("adam", "atan2", "softplus")
UPDATE_DEFAULTS: dict[str, Any] = dict(
    update="adam",
    atan2_a=1.27,
    atan2_b=1.0,
    softplus_beta=50.0,
    cautious=False,
    trust_ratio=False,
    adanorm=False,
    diffgrad=False,
)
#: AdaNorm's EMA coefficient of the gradient norm (the authors' default).
ADANORM_GAMMA = 0.95
#: Cautious masking's floor on the kept fraction (timm's; the paper writes ``mean(mask) + eps``).
CAUTIOUS_MIN_FRACTION = 1e-3
_FLAGS = ("cautious", "trust_ratio", "adanorm", "diffgrad")


@dataclass(frozen=True)
class UpdateRule:
    """The update rule of one param group (``AdamHD``'s options of the same names)."""

    update: str = "adam"
    atan2_a: float = 1.27
    atan2_b: float = 1.0
    softplus_beta: float = 50.0
    cautious: bool = False
    trust_ratio: bool = False
    adanorm: bool = False
    diffgrad: bool = False

    @property
    def plain(self) -> bool:
        """Adam's own direction with no option: the paths of ``adamhd.functional`` serve it."""
        return self.update == "adam" and not any(getattr(self, f) for f in _FLAGS)

    @property
    def elementwise(self) -> bool:
        """No per-tensor reduction (norm or mean) and no extra state: a fused kernel could run
        it in one pass."""
        return not (self.cautious or self.trust_ratio or self.adanorm or self.diffgrad)

    def describe(self) -> str:
        on = [f for f in _FLAGS if getattr(self, f)]
        return ", ".join([f"update={self.update!r}", *(f"{f}=True" for f in on)])

    @classmethod
    def from_group(cls, group: Mapping[str, Any]) -> UpdateRule:
        return cls(**{k: group.get(k, v) for k, v in UPDATE_DEFAULTS.items()})


def check_update_options(group: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first invalid update option of ``group``."""
    update = group.get("update", "adam")
    if not isinstance(update, str) or update not in UPDATES:
        raise ValueError(f"Invalid update: {update!r} (one of {', '.join(map(repr, UPDATES))})")
    for key in ("atan2_a", "atan2_b", "softplus_beta"):
        value = group.get(key, UPDATE_DEFAULTS[key])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0.0 < value < math.inf
        ):
            raise ValueError(f"Invalid {key}: {key}={value!r} (must be finite and > 0)")
    for key in _FLAGS:
        if not isinstance(group.get(key, False), bool):
            raise ValueError(f"Invalid {key}: {group[key]!r} (True or False)")
    if group.get("differentiable") and not UpdateRule.from_group(group).plain:
        raise ValueError("update rules other than plain Adam do not support differentiable=True")


def direction(m_hat: Tensor, sqrt_v_hat: Tensor, eps: float, rule: UpdateRule) -> Tensor:
    """``u`` from the bias-corrected moments (a new tensor)."""
    if rule.update == "atan2":
        return torch.atan2(m_hat, sqrt_v_hat * rule.atan2_b).mul_(rule.atan2_a)
    if rule.update == "softplus":
        return m_hat / torch.nn.functional.softplus(sqrt_v_hat, beta=rule.softplus_beta)
    return m_hat / (sqrt_v_hat + eps)


def adanorm_scale_(e: Tensor, g_norm: Tensor) -> Tensor:
    """Advance ``e <- gamma*e + (1-gamma)*||g||`` in place; return ``max(1, e/||g||)`` (1 where
    ``||g|| = 0``), the factor on ``g`` for the first moment (arXiv 2210.06364, ``e_0 = 0``)."""
    e.mul_(ADANORM_GAMMA).add_(g_norm.to(e.dtype), alpha=1 - ADANORM_GAMMA)
    grow = (e > g_norm) & (g_norm > 0)
    return torch.where(grow, e / g_norm, torch.ones_like(e))


def diffgrad_factor(prev_grad: Tensor, grad: Tensor) -> Tensor:
    """``sigmoid(|g_{t-1} - g_t|)``, the friction on ``m_hat`` (diffGrad v2: ``g_{t-1}`` is a
    copy kept in state, not an alias of ``g_t`` as in the first code, where it was always 0.5)."""
    return torch.sigmoid((prev_grad - grad).abs_())


def agreement_mask(u: Tensor, grad: Tensor) -> Tensor:
    """``1[u*g > 0]`` in ``u``'s dtype: the coordinates where the step and the gradient agree
    (the update rule's ``cautious``; the decay's cautious mask, ``u*p >= 0``, is
    ``adamhd.decay.cautious_mask``)."""
    return (u * grad > 0).to(u.dtype)


def cautious_(u: Tensor, mask: Tensor, kept_fraction: Tensor) -> Tensor:
    """``u*mask / max(mean(mask), 1e-3)`` in place (``kept_fraction`` = whole-tensor mean)."""
    return u.mul_(mask).div_(kept_fraction.clamp(min=CAUTIOUS_MIN_FRACTION).to(u.dtype))


def trust_ratio(p_norm: Tensor, u_norm: Tensor) -> Tensor:
    """LAMB's ``||p||/||u||``, 1 where either norm is 0 (or not finite)."""
    ok = (p_norm > 0) & (u_norm > 0) & torch.isfinite(p_norm / u_norm)
    return torch.where(ok, p_norm / u_norm, torch.ones_like(p_norm))
