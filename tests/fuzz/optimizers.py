"""What the fuzz test (test_fuzz_optimizers.py) knows about each exported optimizer: how to build
it, which options it takes (as hypothesis strategies of valid values), and which shapes it takes.

Every ``torch.optim.Optimizer`` class in ``adamhd.__all__`` / ``adamhd.optim.__all__`` must have
an entry here (``test_every_exported_optimizer_is_fuzzed`` checks it)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import strategies as st

import adamhd
from adamhd import (
    NSGDA,
    SGDW,
    SM3,
    SMMF,
    Adafactor,
    AdafactorHD,
    AdaLo,
    AdamHD,
    AdaMomentum,
    AdaptiveMemorySGD,
    Amos,
    FCAdam,
    Lookahead,
    MuonHD,
    NAdamHD,
    RAdamHD,
    with_decoupled_decay,
)
from adamhd.optim import MomentumSGD

flag = st.booleans()
LRS = st.sampled_from([1e-3, 1e-2, 0.1])
WDS = st.sampled_from([0.0, 0.01, 0.5])


def one_of(*values: Any) -> st.SearchStrategy:
    return st.sampled_from(list(values))


# the decay options of every optimizer with decoupled decay (adamhd.decay.options), per group
DECAY = dict(
    weight_decay=WDS,
    decay=one_of("huber", "l2"),
    delta=one_of("adaptive", 0.05, math.inf),
    delta_scale=one_of(0.5, 1.5),
    delta_beta=one_of(0.0, 0.99),
    decay_form=one_of("explicit", "proximal"),
    cautious_decay=flag,
    decay_scaling=one_of("lr", "schedule"),
)


@dataclass(frozen=True)
class Entry:
    """``make(params_or_groups, **options)`` builds the optimizer. ``options``: strategies of
    constructor keywords; ``group``: the keys a param group may set on its own; ``ndim``: the
    tensor ranks it takes (``None``: any); ``empty``: it takes 0-size tensors; ``loss``: its step
    needs ``loss=``."""

    make: Callable[..., torch.optim.Optimizer]
    options: dict[str, st.SearchStrategy] = field(default_factory=dict)
    group: tuple[str, ...] = ("lr", "weight_decay")
    ndim: tuple[int, ...] | None = None
    empty: bool = True
    loss: bool = False
    examples: int = 30  # hypothesis examples (torch's Muon step costs ~0.1 s even on 4x5)


ADAMHD_OPTIONS = dict(
    lr=LRS,
    betas=one_of((0.9, 0.999), (0.8, 0.95)),
    amsgrad=flag,
    maximize=flag,
    foreach=one_of(None, True, False),
    fused=one_of(None, False, True),
    update=one_of("adam", "atan2", "softplus"),
    cautious=flag,
    trust_ratio=flag,
    adanorm=flag,
    diffgrad=flag,
    **DECAY,
)

ENTRIES: dict[str, Entry] = {
    "AdamHD": Entry(AdamHD, ADAMHD_OPTIONS, ("lr", "weight_decay", "decay", "delta",
                                             "decay_form", "cautious_decay")),
    "NSGDA": Entry(NSGDA, dict(lr=LRS, momentum=one_of(0.0, 0.9), weight_decay=WDS,
                               maximize=flag, foreach=one_of(None, False))),
    "SGDW": Entry(SGDW, dict(lr=LRS, momentum=one_of(0.0, 0.9), maximize=flag,
                             foreach=one_of(None, False), **DECAY),
                  ("lr", "weight_decay", "decay", "cautious_decay")),
    "MomentumSGD": Entry(MomentumSGD, dict(lr=LRS, momentum=one_of(0.0, 0.9), maximize=flag,
                                           foreach=one_of(None, False)), ("lr", "momentum")),
    "SM3": Entry(SM3, dict(lr=LRS, momentum=one_of(0.0, 0.9), weight_decay=WDS, maximize=flag)),
    "SMMF": Entry(SMMF, dict(lr=LRS, beta=one_of(0.0, 0.9), weight_decay=WDS,
                             decay_rate=one_of(-0.5, -0.8), maximize=flag)),
    "Adafactor": Entry(Adafactor, dict(lr=LRS, weight_decay=WDS, d=one_of(0.5, 1.0),
                                       relative_step=flag, scale_parameter=flag, maximize=flag)),
    "AdaLo": Entry(AdaLo, dict(lr=one_of(0.1, 1.0), weight_decay=WDS,
                               mode=one_of("adversarial", "compliant"), maximize=flag),
                   loss=True),
    "NAdamHD": Entry(NAdamHD, dict(lr=LRS, foreach=one_of(None, False), maximize=flag, **DECAY),
                     ("lr", "weight_decay", "decay", "decay_form")),
    "RAdamHD": Entry(RAdamHD, dict(lr=LRS, foreach=one_of(None, False), maximize=flag, **DECAY),
                     ("lr", "weight_decay", "decay", "decay_form")),
    # torch's Adafactor and Muon divide by zero on 0-size tensors (torch 2.13): not fuzzed there
    "AdafactorHD": Entry(AdafactorHD, dict(lr=LRS, maximize=flag, **DECAY),
                         ("lr", "weight_decay", "decay"), empty=False),
    "MuonHD": Entry(MuonHD, dict(lr=LRS, nesterov=flag, **DECAY), ("lr", "weight_decay"),
                    ndim=(2,), empty=False, examples=8),
    "SGD+decay": Entry(with_decoupled_decay(torch.optim.SGD),
                       dict(lr=LRS, momentum=one_of(0.0, 0.9), maximize=flag,
                            foreach=one_of(None, False), **DECAY),
                       ("lr", "weight_decay", "decay", "decay_form", "cautious_decay")),
    "Adam+decay": Entry(with_decoupled_decay(torch.optim.Adam),
                        dict(lr=LRS, amsgrad=flag, maximize=flag, foreach=one_of(None, False),
                             **DECAY),
                        ("lr", "weight_decay", "decay", "delta", "cautious_decay")),
    # fused=True: the one-call chain of adamhd.decay.fused_chain (where it applies)
    "Adam+decay fused": Entry(
        lambda params, **kw: with_decoupled_decay(torch.optim.Adam)(params, fused=True, **kw),
        dict(lr=LRS, amsgrad=flag, maximize=flag, **DECAY),
        ("lr", "weight_decay", "decay", "delta", "decay_form", "cautious_decay")),
    "Lookahead(AdamHD)": Entry(
        lambda params, k=2, alpha=0.5, **kw: Lookahead(AdamHD(params, **kw), k=k, alpha=alpha),
        dict(k=one_of(1, 2, 3), alpha=one_of(0.5, 1.0), lr=LRS, weight_decay=WDS,
             foreach=one_of(None, False))),
    # low-bit moments: plain Adam directions, no amsgrad, not fused (refused, tested elsewhere)
    "AdamHD lowbit": Entry(AdamHD, dict(
        lr=LRS, maximize=flag, foreach=one_of(None, True, False),
        state_dtype=one_of("bfloat16", "int8"), min_8bit_size=one_of(1, 4096),
        bf16_stochastic_round=flag, rounding_seed=one_of(0, 7), **DECAY),
        ("lr", "weight_decay", "decay", "cautious_decay")),
    "AdaMomentum": Entry(AdaMomentum, dict(lr=LRS, betas=one_of((0.9, 0.999), (0.8, 0.95)),
                                           weight_decay=WDS, maximize=flag)),
    "FCAdam": Entry(FCAdam, dict(lr=LRS, weight_decay=WDS, alpha=one_of(0.5, 0.9),
                                 history=one_of(1, 3), drop=flag, seed=one_of(0, 3),
                                 maximize=flag)),
    "AdaptiveMemorySGD": Entry(AdaptiveMemorySGD, dict(lr=LRS, lam=one_of(0.0, 0.1, 1.0),
                                                       beta_max=one_of(0.5, 0.9),
                                                       weight_decay=WDS, maximize=flag)),
    "Amos": Entry(Amos, dict(lr=LRS, beta=one_of(0.9, 0.999), weight_decay=WDS,
                             cautious_decay=flag, maximize=flag)),
    "Lookahead(AdaLo)": Entry(
        lambda params, k=2, **kw: Lookahead(AdaLo(params, **kw), k=k),
        dict(k=one_of(1, 2), lr=one_of(0.1, 1.0), weight_decay=WDS), loss=True),
}

# exported optimizer classes and the entries that build them
COVERS = {
    AdamHD: "AdamHD", NSGDA: "NSGDA", SGDW: "SGDW", SM3: "SM3", SMMF: "SMMF",
    Adafactor: "Adafactor", AdaLo: "AdaLo", NAdamHD: "NAdamHD", RAdamHD: "RAdamHD",
    AdafactorHD: "AdafactorHD", MuonHD: "MuonHD", Lookahead: "Lookahead(AdamHD)",
    MomentumSGD: "MomentumSGD", AdaMomentum: "AdaMomentum", FCAdam: "FCAdam", Amos: "Amos",
    AdaptiveMemorySGD: "AdaptiveMemorySGD",
}


def exported_optimizer_classes() -> set[type]:
    names = set(adamhd.__all__) | set(adamhd.optim.__all__)
    found = set()
    for name in names:
        obj = getattr(adamhd, name, None) or getattr(adamhd.optim, name, None)
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer):
            found.add(obj)
    return found
