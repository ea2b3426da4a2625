"""The optimizer configurations tests/optim trains under FSDP2 and in one process."""

from __future__ import annotations

from torch import nn

from adamhd import NSGDA, SM3, SMMF, Adafactor, AdaLo, AdaMomentum, Amos, with_decoupled_decay
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

#: the factored optimizers (issue 20): row/column statistics of sharded tensors; SMMF's packed
#: signs are each rank's own, so the tests compare them unpacked (``test_distributed.py``)
SURVEY = {
    f"{name}_{path}": (cls, {**kwargs, "foreach": path == "foreach"})
    for name, cls, kwargs, paths in (
        ("adafactor", Adafactor, dict(lr=0.05, weight_decay=0.3), ("single", "foreach")),
        ("adafactor_fixed", Adafactor, dict(lr=0.05, relative_step=False, d=0.5), ("foreach",)),
        ("sm3", SM3, dict(lr=0.05, momentum=0.5, weight_decay=0.3), ("single", "foreach")),
        ("smmf", SMMF, dict(lr=0.05, weight_decay=0.3, decay_rate=-0.8), ("single", "foreach")),
        # their weight_decay through the decay rules: adaptive Huber (whole-tensor mean|p|),
        # cautious (the update's sign as a DTensor), proximal
        ("adafactor_huber", Adafactor, dict(lr=0.05, weight_decay=0.3, decay="huber",
                                            delta="adaptive", decay_form="proximal"), ("single",)),
        ("sm3_huber", SM3, dict(lr=0.05, momentum=0.5, weight_decay=0.3, decay="huber",
                                delta="adaptive", cautious_decay=True), ("foreach",)),
        ("smmf_huber", SMMF, dict(lr=0.05, weight_decay=2.0, decay="huber", delta="adaptive",
                                  cautious_decay=True), ("single",)),
    )
    for path in paths
}

#: saved with torch.distributed.checkpoint after 2 steps and resumed (SMMF's per-rank signs are
#: not resharded by DCP: not in this list)
SURVEY_DCP = ("adafactor_foreach", "sm3_single", "adafactor_huber_single")


def make_optimizer(name: str, model: nn.Module):
    cls, kwargs = CONFIGS[name] if name in CONFIGS else SURVEY[name]
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
