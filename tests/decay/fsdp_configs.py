"""Wrapped optimizers run under FSDP2 by ``tests/decay/fsdp_worker.py`` and in one process by
``tests/decay/test_wrapper_fsdp.py``."""

from __future__ import annotations

import torch
from torch import nn

from adamhd import with_decoupled_decay
from tests.distributed import common

CONFIGS = {
    "adam_huber": (torch.optim.Adam, dict(lr=2e-2, weight_decay=0.5, foreach=True)),
    "sgd_cautious_proximal": (
        torch.optim.SGD,
        dict(lr=5e-2, momentum=0.9, weight_decay=2.0, cautious_decay=True,
             decay_form="proximal", foreach=False),
    ),
}


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    base, kwargs = CONFIGS[name]
    return with_decoupled_decay(base)(common.groups(model), **kwargs)
