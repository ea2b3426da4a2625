"""transformers.Trainer + AdamHD on a tiny random GPT-2, offline (examples/hf_trainer.py)."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is not installed (extra 'integrations')")

from adamhd import AdamHD  # noqa: E402
from tests.integrations.conftest import load_example  # noqa: E402

STEPS = 6


@pytest.fixture(scope="module")
def example():
    return load_example("hf_trainer")


def weights(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_trainer_adamhd_infinite_delta_equals_trainer_adamw(example, tmp_path):
    hd = example.train(str(tmp_path / "hd"), STEPS, "adamhd", {"delta": math.inf})
    aw = example.train(str(tmp_path / "aw"), STEPS, "adamw")
    assert isinstance(aw.optimizer.optimizer, torch.optim.AdamW)
    w_hd, w_aw = weights(hd), weights(aw)
    initial = example.tiny_gpt2().state_dict()
    assert any(not torch.equal(w_hd[n], initial[n]) for n in w_hd)  # it trained
    # equal up to float rounding (near-zero-gradient entries: Adam divides ~0 by ~0)
    for name in w_aw:
        torch.testing.assert_close(w_hd[name], w_aw[name], atol=1e-5, rtol=1e-4, msg=name)


def test_trainer_adamhd_adaptive(example, tmp_path):
    trainer = example.train(str(tmp_path), STEPS, "adamhd")
    opt = trainer.optimizer.optimizer
    assert isinstance(opt, AdamHD)
    decayed, exempt = [g for g in opt.param_groups if g["weight_decay"] > 0], [
        g for g in opt.param_groups if g["weight_decay"] == 0
    ]
    assert decayed and exempt  # the Trainer's usual groups: biases and LayerNorms exempt
    p = decayed[0]["params"][0]
    assert opt.state[p]["step"].item() == STEPS
    assert opt.state[p]["delta_mu"] > 0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == STEPS and all(math.isfinite(v) for v in losses)
    # the scheduler drove lr (cosine after warmup), AdamHD read it from its param_groups
    assert decayed[0]["lr"] < trainer.args.learning_rate
