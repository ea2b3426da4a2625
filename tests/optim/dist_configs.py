"""The optimizer configurations tests/optim trains under FSDP2 and in one process."""

from __future__ import annotations

from torch import nn

from adamhd import NSGDA, AdaLo, AdaMomentum, Amos, with_decoupled_decay
from tests.distributed import common

CONFIGS = {
    "nsgda_foreach": (NSGDA, dict(lr=0.05, momentum=0.8, weight_decay=0.3)),
    "nsgda_loop": (NSGDA, dict(lr=0.05, momentum=0.8, foreach=False)),
    "adalo": (AdaLo, dict(lr=5.0, betas=(0.8, 0.9), weight_decay=0.3)),
    "nsgda_huber": (with_decoupled_decay(NSGDA), dict(lr=0.05, weight_decay=0.3, decay="huber")),
    "nsgda_native_huber": (NSGDA, dict(lr=0.05, weight_decay=0.3, decay="huber",
                                       cautious_decay=True)),
    "adamomentum": (AdaMomentum, dict(lr=0.05, betas=(0.8, 0.9), weight_decay=0.3)),
    "amos_cautious": (Amos, dict(lr=0.05, beta=0.9, cautious_decay=True)),
}


def make_optimizer(name: str, model: nn.Module):
    cls, kwargs = CONFIGS[name]
    return cls(common.groups(model), **kwargs)


def step(opt, t: int) -> None:
    if isinstance(opt, AdaLo):
        opt.step(loss=0.5 + 1.0 / (t + 1))
    else:
        opt.step()


def reference(name: str):
    """One process on the global batch: what the 2-process run must match."""
    model = common.make_model()
    opt = make_optimizer(name, model)
    for t, (x, y) in enumerate(common.batches()):
        nn.functional.mse_loss(model(x), y).backward()
        step(opt, t)
        opt.zero_grad()
    return model, opt
