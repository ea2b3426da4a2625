"""Huber-decay presets of torch's optimizers: named, importable, picklable classes.

Each is ``with_decoupled_decay(base)`` (``adamhd.decay.wrapper``) with its defaults: decoupled
Huber decay (``decay="huber"``, adaptive threshold ``delta_scale=1.5``, ``delta_beta=0.99``,
explicit form, ``tau = lr*weight_decay``) in place of the base's own ``weight_decay``, which is
given 0. ``weight_decay`` defaults to the base's own default when that is positive (Muon: 0.1),
else to AdamW's 1e-2.

* ``NAdamHD``: ``torch.optim.NAdam`` (arXiv 1609.04747 / Dozat 2016) + Huber decay.
* ``RAdamHD``: ``torch.optim.RAdam`` (arXiv 1908.03265) + Huber decay.
* ``AdafactorHD``: ``torch.optim.Adafactor`` (arXiv 1804.04235) + Huber decay; ``tau`` uses the
  group's ``lr`` (Adafactor's cap on its relative step), as torch's own ``weight_decay`` does.
* ``MuonHD``: ``torch.optim.Muon`` (2-D parameters only) with its decoupled ``p*(1 - lr*wd)``
  replaced by the Huber rule (same ``tau = lr*wd``; Muon's ``adjust_lr_fn`` scales the update
  only, not the decay, as in torch).

``AdafactorHD`` and ``MuonHD`` exist where torch has their base (``torch.optim.Adafactor``: torch
2.5; ``torch.optim.Muon``: torch 2.9). On an older torch the name is still importable (``import
adamhd`` works on the declared minimum) and constructing it raises ``RuntimeError`` naming the
torch version it needs.
"""

from __future__ import annotations

import torch

from adamhd.decay.wrapper import with_decoupled_decay

__all__ = ["AdafactorHD", "MuonHD", "NAdamHD", "RAdamHD"]


class NAdamHD(with_decoupled_decay(torch.optim.NAdam)):  # type: ignore[misc]
    """``torch.optim.NAdam`` with decoupled Huber decay (see ``adamhd.optim.presets``)."""


class RAdamHD(with_decoupled_decay(torch.optim.RAdam)):  # type: ignore[misc]
    """``torch.optim.RAdam`` with decoupled Huber decay (see ``adamhd.optim.presets``)."""


def _base(name: str, since: str) -> type:
    """``torch.optim.<name>``, or a stand-in whose construction says which torch has it."""
    base = getattr(torch.optim, name, None)
    if base is not None:
        return with_decoupled_decay(base)

    class Unavailable:
        unavailable = True

        def __init__(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError(
                f"{type(self).__name__} needs torch.optim.{name} (torch >= {since}); this is torch "
                f"{torch.__version__}: upgrade torch or use another optimizer"
            )

    return Unavailable


class AdafactorHD(_base("Adafactor", "2.5")):  # type: ignore[misc]
    """``torch.optim.Adafactor`` with decoupled Huber decay (see ``adamhd.optim.presets``)."""


class MuonHD(_base("Muon", "2.9")):  # type: ignore[misc]
    """``torch.optim.Muon`` with its decoupled L2 decay replaced by the Huber rule (see
    ``adamhd.optim.presets``); ``weight_decay`` defaults to Muon's 0.1."""
