"""A small real problem: both AdamW and AdamHD train a classifier to high accuracy."""

import torch
from torch import nn

from adamhd import AdamHD, param_groups


def make_data(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = ((x[:, 0] ** 2 + x[:, 1] ** 2) > 1.0).long()  # inside vs outside a circle
    return x, y


def train(make_opt, steps=300):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 2))
    opt = make_opt(model)
    x, y = make_data()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt, yt = make_data(seed=1)
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    return loss.item(), acc


def test_adamhd_and_adamw_both_learn():
    start = nn.functional.cross_entropy(torch.zeros(512, 2), make_data()[1]).item()
    for name, make in {
        "adamw": lambda m: torch.optim.AdamW(param_groups(m, 0.1), lr=1e-2),
        "adamhd": lambda m: AdamHD(param_groups(m, 0.1), lr=1e-2),
        "adamhd-proximal": lambda m: AdamHD(param_groups(m, 0.1), lr=1e-2, decay_form="proximal"),
    }.items():
        loss, acc = train(make)
        assert loss < 0.25 * start, name
        assert acc > 0.93, (name, acc)
