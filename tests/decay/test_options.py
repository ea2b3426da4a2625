"""A param group's decay keys: validation, the rule they select, and the strength tau."""

import math

import pytest
import torch

from adamhd.decay import (
    DECAY_DEFAULTS,
    HuberDecay,
    L2Decay,
    check_decay_options,
    decay_coefficient,
    decay_strength,
    group_decay_coefficient,
    remember_initial_lr,
    rule_from_group,
)


def test_rule_from_group_defaults_and_overrides():
    assert rule_from_group({"weight_decay": 0.1}) == HuberDecay()
    assert rule_from_group({"weight_decay": 0.1, "decay": "l2", "delta": 0.3,
                            "decay_form": "proximal", "cautious_decay": True}) == L2Decay(
        form="proximal", cautious=True)
    rule = rule_from_group({"weight_decay": 0.1, "delta": 0.3, "delta_scale": 2.0,
                            "delta_beta": 0.5, "cautious_decay": True})
    assert rule == HuberDecay(delta=0.3, delta_scale=2.0, delta_beta=0.5, cautious=True)
    assert not rule.adaptive and rule.before_update
    assert L2Decay().delta == math.inf and not L2Decay().adaptive
    with pytest.raises(TypeError):
        L2Decay(delta=0.5)  # L2 has no threshold to set
    with pytest.raises(AttributeError):
        HuberDecay().delta = 1.0  # frozen records


@pytest.mark.parametrize(
    "bad, name",
    [
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(weight_decay=math.nan), "weight_decay"),
        (dict(weight_decay=True), "weight_decay"),
        (dict(decay="L2"), "decay"),
        (dict(delta="auto"), "delta"),
        (dict(delta=0.0), "delta"),
        (dict(delta_scale=-1.0), "delta_scale"),
        (dict(delta_beta=1.0), "delta_beta"),
        (dict(decay_form="implicit"), "decay_form"),
        (dict(cautious_decay=None), "cautious_decay"),
        (dict(decay_scaling="lr_t"), "decay_scaling"),
        (dict(decay_scaling="schedule", lr=0.0), "lr=0.0"),
        (dict(decay_scaling="schedule", lr=torch.tensor(0.0)), "lr="),
        (dict(decay_scaling="schedule", initial_lr=math.inf), "initial_lr=inf"),
    ],
)
def test_check_decay_options_names_the_bad_key(bad, name):
    group = {"weight_decay": 0.1, "lr": 1e-3, **bad}
    with pytest.raises(ValueError, match=name):
        check_decay_options(group)


def test_defaults_are_valid():
    check_decay_options({"weight_decay": 0.0, "lr": 0.0, **DECAY_DEFAULTS})


def test_strength_formulas():
    assert decay_coefficient(0.1) == 0.1
    assert decay_coefficient(0.1, "schedule", 0.5) == 0.1 / 0.5
    assert decay_strength(0.25, decay_coefficient(0.1, "schedule", 0.5)) == pytest.approx(
        0.25 / 0.5 * 0.1, rel=1e-15)
    lr = torch.tensor(0.25)
    assert torch.equal(decay_strength(lr, 0.1), lr * 0.1)  # a tensor lr stays a tensor


def test_group_decay_coefficient_and_initial_lr():
    group = {"weight_decay": 0.2, "lr": 0.4, "decay_scaling": "schedule"}
    with pytest.raises(ValueError, match="initial_lr"):
        group_decay_coefficient(group)  # not yet remembered
    remember_initial_lr(group)
    assert group["initial_lr"] == 0.4
    group["lr"] = 0.1
    remember_initial_lr(group)  # a remembered (or scheduler-set) initial_lr is kept
    assert group["initial_lr"] == 0.4
    assert group_decay_coefficient(group) == 0.2 / 0.4
    group["initial_lr"] = torch.tensor(0.8)  # schedulers keep tensors for tensor lrs
    assert group_decay_coefficient(group) == pytest.approx(0.25)
    plain = {"weight_decay": 0.2, "lr": 0.4}
    remember_initial_lr(plain)
    assert "initial_lr" not in plain and group_decay_coefficient(plain) == 0.2


def test_weight_decay_message_uses_torchs_wording():
    with pytest.raises(ValueError, match="Invalid weight_decay value: -1"):
        check_decay_options({"weight_decay": -1, "lr": 1e-3})
