"""Shared by the FSDP2 worker for transforms and Lookahead and its single-process references."""

from __future__ import annotations

import torch
from torch import nn

from adamhd import Lookahead, transforms
from tests.distributed import common

# name -> the transforms attached, in order; every transform with a per-tensor or per-row statistic
TRANSFORM_CASES: dict[str, list] = {
    "centralize": [("centralize", {})],
    "agc": [("agc", {"clip": 0.05})],
    "normalize": [("normalize", {})],
    "soft_clip": [("soft_clip", {})],
    "layer_norm_adaptation": [("layer_norm_adaptation", {})],
    "centralize+agc": [("centralize", {}), ("agc", {"clip": 0.05})],
}
# all-reduces per step: row statistics of dim-0-sharded weights are local; whole-tensor ones
# (the biases' units, normalisation, layer adaptation) take one all-reduce per transform
ALL_REDUCES = {
    "centralize": 0, "agc": 1, "normalize": 1, "soft_clip": 1, "layer_norm_adaptation": 1,
    "centralize+agc": 1,
}
LR = 0.1
LOOKAHEAD = dict(k=3, alpha=0.5)
RESUME_AT = 2


def transform_optimizer(model: nn.Module, case: str) -> torch.optim.Optimizer:
    opt = torch.optim.SGD(model.parameters(), lr=LR)  # SGD itself needs no collective
    transforms.attach(opt, *TRANSFORM_CASES[case])
    return opt


def lookahead_optimizer(model: nn.Module) -> Lookahead:
    return Lookahead(common.make_optimizer(model, foreach=True), **LOOKAHEAD)


def reference_transform(case: str | None) -> nn.Module:
    model = common.make_model()
    opt = transform_optimizer(model, case) if case else torch.optim.SGD(model.parameters(), lr=LR)
    common.train(model, opt, common.batches())
    return model


def reference_lookahead() -> tuple[nn.Module, Lookahead]:
    model = common.make_model()
    opt = lookahead_optimizer(model)
    common.train(model, opt, common.batches())
    return model, opt


def slow_weights(model: nn.Module, opt: Lookahead) -> dict[str, torch.Tensor]:
    return common.state_by_name(model, opt, "lookahead_slow")


SLOW_KEY = "lookahead_slow"

# tensor parallelism: shapes and the dim each is sharded on (rows are split for dims > 0)
TP_TENSORS = [((5, 6), 1), ((6,), 0), ((3, 4, 2), 2), ((4, 3), 0)]


def tp_inputs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    out = []
    for shape, _ in TP_TENSORS:
        p = torch.randn(shape, generator=g)
        out.append((p, torch.randn(shape, generator=g) * 0.3 + 0.1))
    return out


def reference_tp(name: str) -> list[torch.Tensor]:
    params = []
    for p, grad in tp_inputs():
        param = nn.Parameter(p.clone())
        param.grad = grad.clone()
        params.append(param)
    getattr(transforms, name)(params)
    return [p.grad for p in params]
