"""Gradient-tail statistics (against numpy, written here) and the TensorBoard histograms of a lab
run, read back from the event file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adamhd.lab.data import load_corpus
from adamhd.lab.tails import nearest_rank, tail_stats
from adamhd.lab.train import RunConfig, load_metrics, train_run


def _kurtosis(x: np.ndarray) -> float:
    c = x - x.mean()
    return float((c**4).mean() / (c**2).mean() ** 2 - 3.0)


@pytest.mark.parametrize("n", [1, 7, 1000, 4097])
def test_nearest_rank_is_numpys_inverted_cdf(n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    for q in (0.0, 0.5, 0.999, 1.0):
        want = np.quantile(x.numpy(), q, method="inverted_cdf")
        assert nearest_rank(x, q) == want


def test_tail_stats_tell_gaussian_from_heavy_tailed():
    gen = np.random.default_rng(0)
    gauss = gen.standard_normal((200, 300))
    heavy = gen.standard_t(3, (200, 300))
    for x in (gauss, heavy):
        s = tail_stats(torch.from_numpy(x).float())
        xf = torch.from_numpy(x).float().double().numpy()
        assert s["kurtosis"] == pytest.approx(_kurtosis(xf), rel=1e-9)
        a = np.abs(xf).ravel()
        ratio = np.quantile(a, 0.999, method="inverted_cdf") / np.quantile(
            a, 0.5, method="inverted_cdf")
        assert s["p999_p50"] == pytest.approx(ratio, rel=1e-12)
    assert abs(tail_stats(torch.from_numpy(gauss))["kurtosis"]) < 0.1
    assert tail_stats(torch.from_numpy(heavy))["kurtosis"] > 2.0
    assert tail_stats(torch.zeros(5)) == {"kurtosis": 0.0, "p999_p50": None}


@pytest.fixture
def corpus(works_dir, tmp_path):
    return load_corpus(str(works_dir), cache_dir=tmp_path / "cache")


def _cfg(**kw) -> RunConfig:
    base = dict(optimizer="adamhd", seed=1, steps=4, model="mini", batch_size=4, context=16,
                lr=3e-3, weight_decay=0.1, eval_every=2, ckpt_every=2, eval_windows=8,
                final_eval_windows=8, prune=False, domains=False, choice_items=0,
                corpus_key="k")
    return RunConfig(**{**base, **kw})


def test_run_logs_tails_and_tensorboard_histograms(corpus, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import (
        HISTOGRAMS,
        EventAccumulator,
    )

    board = tmp_path / "tb"
    run_dir = tmp_path / "runs" / "adamhd" / "seed1"
    train_run(_cfg(tensorboard=str(board)), corpus, run_dir, progress=False)
    rows = [r for r in load_metrics(run_dir) if r["kind"] == "tails"]
    assert [r["step"] for r in rows] == [2, 4]
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    names = [n for n in ckpt["model"] if n.startswith("blocks.") and n.endswith(".weight")
             and ckpt["model"][n].dim() == 2]
    assert set(rows[0]["layers"]) == set(names)
    assert all(s["p999_p50"] > 1 for r in rows for s in r["layers"].values())

    acc = EventAccumulator(str(board / "adamhd" / "seed1"), size_guidance={HISTOGRAMS: 0})
    acc.Reload()
    tags = acc.Tags()["histograms"]
    for kind in ("weights", "grads", "updates"):
        assert {f"{kind}/{n}" for n in names} <= set(tags), kind
    name = names[0]
    final = ckpt["model"][name]
    events = acc.Histograms(f"weights/{name}")
    assert [e.step for e in events] == [2, 4]
    last = events[-1].histogram_value
    assert last.num == final.numel()
    assert last.min == float(final.min()) and last.max == float(final.max())
    assert last.sum == pytest.approx(float(final.double().sum()), rel=1e-5, abs=1e-5)
    updates = acc.Histograms(f"updates/{name}")[-1].histogram_value
    assert updates.num == final.numel() and 0 < updates.sum_squares < 1


def test_no_board_and_no_package_errors(corpus, tmp_path, monkeypatch):
    """Without --tensorboard nothing is written there; a missing package is a clear error."""
    import adamhd.lab.tails as tails

    train_run(_cfg(steps=2), corpus, tmp_path / "r", progress=False)
    assert not any(p.name.startswith("events") for p in tmp_path.rglob("*"))
    monkeypatch.setitem(__import__("sys").modules, "torch.utils.tensorboard", None)
    with pytest.raises(ValueError, match="pip install"):
        tails.require_tensorboard()


def test_tails_do_not_change_the_run(corpus, tmp_path):
    """The same numbers with and without --tensorboard (the board only reads)."""
    a = train_run(_cfg(), corpus, tmp_path / "a", progress=False)
    b = train_run(_cfg(tensorboard=str(tmp_path / "tb")), corpus, tmp_path / "b",
                  progress=False)
    assert a["final_val_loss"] == b["final_val_loss"]

    def numbers(run_dir):
        return [{k: v for k, v in r.items() if k not in ("time", "wall")}
                for r in load_metrics(run_dir)]

    assert numbers(tmp_path / "a") == numbers(tmp_path / "b")


def test_sweep_shards_may_log_to_different_boards():
    from adamhd.lab.sweep_report import _settings

    a = {"argv": ["sweep", "--shard", "0/2"], "seeds": [0], "base_config": {"lr": 1e-3,
                                                                            "tensorboard": "tb0"}}
    b = {**a, "argv": ["sweep", "--shard", "1/2"], "base_config": {"lr": 1e-3,
                                                                   "tensorboard": "/m2/tb"}}
    assert _settings(a) == _settings(b)
    c = {**a, "base_config": {"lr": 2e-3, "tensorboard": "tb0"}}
    assert _settings(a) != _settings(c)
