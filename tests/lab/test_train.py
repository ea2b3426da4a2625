import json
import math

import pytest
import torch

from adamhd.lab.data import load_corpus
from adamhd.lab.train import CheckpointError, RunConfig, load_metrics, lr_at, train_run


@pytest.fixture
def corpus(works_dir, tmp_path):
    return load_corpus(str(works_dir), cache_dir=tmp_path / "cache")


def cfg(**kw) -> RunConfig:
    base = dict(optimizer="adamhd", seed=1, steps=8, model="tiny", batch_size=4, context=16,
                lr=3e-3, weight_decay=0.1, eval_every=2, ckpt_every=4, eval_windows=16,
                final_eval_windows=16, prune_windows=8, dropout=0.1, corpus_key="k")
    return RunConfig(**{**base, **kw})


def test_lr_schedule_warmup_then_cosine():
    c = RunConfig(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(0.1)
    assert lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0)
    assert lr_at(55, c) == pytest.approx(0.55)
    assert lr_at(100, c) == pytest.approx(0.1)
    assert all(lr_at(s, c) >= lr_at(s + 1, c) for s in range(10, 99))


def _final_state(run_dir):
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    return ckpt["model"], ckpt["optimizer"]


def _numbers(rows):
    """Everything in the metrics except the clocks."""
    return [{k: v for k, v in r.items() if k not in ("time", "wall")} for r in rows]


@pytest.mark.parametrize("optimizer", ["adamhd", "adamw"])
def test_resume_continues_bit_for_bit(corpus, tmp_path, optimizer):
    c = cfg(optimizer=optimizer)
    full = train_run(c, corpus, tmp_path / "full", progress=False)
    assert train_run(c, corpus, tmp_path / "cut", progress=False, stop_after=3) is None
    # the "kill": lines logged after the checkpoint are lost work, and must not survive
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "step": 4, "loss": 123.0}) + "\n")
    resumed = train_run(c, corpus, tmp_path / "cut", resume=True, progress=False)

    assert _numbers(load_metrics(tmp_path / "cut")) == _numbers(load_metrics(tmp_path / "full"))
    for key in ("final_val_loss", "domains", "weights", "histogram"):
        assert resumed[key] == full[key]
    assert resumed["pruning"]["global"]["loss"] == full["pruning"]["global"]["loss"]
    model_a, opt_a = _final_state(tmp_path / "full")
    model_b, opt_b = _final_state(tmp_path / "cut")
    for k in model_a:
        assert torch.equal(model_a[k], model_b[k]), k
    for i in opt_a["state"]:
        for k, v in opt_a["state"][i].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(opt_b["state"][i][k])), k


def test_same_seed_same_numbers_other_seed_other_numbers(corpus, tmp_path):
    c = cfg(steps=3, dropout=0.0)
    a = train_run(c, corpus, tmp_path / "a", progress=False)
    b = train_run(c, corpus, tmp_path / "b", progress=False)
    d = train_run(cfg(steps=3, dropout=0.0, seed=2), corpus, tmp_path / "d", progress=False)
    assert a["final_val_loss"] == b["final_val_loss"]
    assert a["final_val_loss"] != d["final_val_loss"]
    assert math.isfinite(a["final_val_loss"])


def test_finished_run_is_not_redone_on_resume(corpus, tmp_path):
    c = cfg(steps=2)
    first = train_run(c, corpus, tmp_path / "r", progress=False)
    again = train_run(c, corpus, tmp_path / "r", resume=True, progress=False)
    assert again == json.loads(json.dumps(first))


def test_corrupt_checkpoint_is_an_error_not_a_restart(corpus, tmp_path):
    c = cfg()
    train_run(c, corpus, tmp_path / "r", progress=False, stop_after=4)
    path = tmp_path / "r" / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="unreadable"):
        train_run(c, corpus, tmp_path / "r", resume=True, progress=False)
    torch.save({"something": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="not an adamhd lab checkpoint"):
        train_run(c, corpus, tmp_path / "r", resume=True, progress=False)


def test_mismatched_checkpoint_is_an_error(corpus, tmp_path):
    train_run(cfg(), corpus, tmp_path / "r", progress=False, stop_after=4)
    with pytest.raises(CheckpointError, match="lr: saved 0.003 vs now 0.001"):
        train_run(cfg(lr=1e-3), corpus, tmp_path / "r", resume=True, progress=False)


def test_bad_settings(corpus, tmp_path):
    with pytest.raises(ValueError, match="steps"):
        cfg(steps=0)
    with pytest.raises(ValueError, match="dtype"):
        cfg(dtype="float8")
    with pytest.raises(ValueError, match="float16 needs a CUDA"):
        train_run(cfg(dtype="float16"), corpus, tmp_path / "r", progress=False)
