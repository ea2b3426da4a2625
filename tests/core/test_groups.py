import pytest
import torch
from torch import nn

from adamhd import AdamHD, param_groups


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 4)
        self.conv = nn.Conv1d(4, 4, 3)
        self.bn = nn.BatchNorm1d(4)
        self.gate = nn.Parameter(torch.ones(4))  # a 1-D parameter owned by a custom module
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight  # weight tying
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def ids(ps):
    return {id(p) for p in ps}


def test_split_by_module_type():
    m = Block()
    groups = param_groups(m, 0.1)
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert ids(decay["params"]) == ids([m.emb.weight, m.fc.weight, m.conv.weight])
    assert ids(no_decay["params"]) == ids(
        [m.norm.weight, m.norm.bias, m.fc.bias, m.conv.bias, m.bn.weight, m.bn.bias, m.gate]
    )
    all_listed = [p for g in groups for p in g["params"]]
    assert len(all_listed) == len(ids(all_listed))  # the tied weight appears once


def test_exempt_embeddings_and_extra_types_and_options():
    m = Block()
    decay, no_decay = param_groups(m, 0.1, exempt_embeddings=True, exempt_types=[nn.Conv1d],
                                   lr=3e-4, delta=0.5)
    assert ids(decay["params"]) == ids([m.fc.weight])
    assert id(m.emb.weight) in ids(no_decay["params"])
    assert id(m.conv.weight) in ids(no_decay["params"])
    assert decay["lr"] == no_decay["lr"] == 3e-4 and decay["delta"] == 0.5


def test_groups_feed_the_optimizer():
    m = Block()
    opt = AdamHD(param_groups(m, 0.1), lr=1e-3)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_only_exempt_parameters_gives_one_group():
    groups = param_groups(nn.LayerNorm(3), 0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0


@pytest.mark.parametrize("wd", [0.0, 0.3])
def test_no_decay_group_skips_the_threshold_statistics(wd):
    m = nn.Linear(3, 3)
    opt = AdamHD(param_groups(m, wd))
    m(torch.randn(2, 3)).sum().backward()
    opt.step()
    # mu is created for every adaptive parameter but only moves while its group decays
    assert all("delta_mu" in opt.state[p] for p in m.parameters())
