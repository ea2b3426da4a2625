"""``adamhd.bench.wrappers`` runs and reports (no speed is asserted: speed lives in its output)."""

from __future__ import annotations

import pytest

from adamhd.bench import wrappers


def test_run_times_each_variant_against_its_base():
    rows = wrappers.run(["sgd", "muon"], shapes=[(8, 8), (8, 4)], rounds=3, warmup=1)
    assert [r.optimizer for r in rows] == ["sgd", "muon"]
    for r in rows:
        assert r.base_ms > 0 and r.huber_ratio > 0 and r.cautious_ratio > 0
    table = wrappers.format_table(rows)
    assert table.count("\n") == 3 and "| muon |" in table


def test_main_prints_the_table(capsys):
    assert wrappers.main(["--optimizers", "adam", "--shapes", "4x4", "--rounds", "2"]) == 0
    assert "| adam |" in capsys.readouterr().out


def test_unknown_optimizer_is_an_error():
    with pytest.raises(SystemExit, match="unknown optimizers: sgdx"):
        wrappers.main(["--optimizers", "sgdx"])


def test_ops_times_the_chain_the_pass_and_torch_ops(monkeypatch):
    """--ops: adam-fused's Huber rows take the fused chain, the "-pass" and "-ops" rows do not."""
    from adamhd.decay import wrapper
    from adamhd.kernels import cpu

    if cpu.load() is None:
        pytest.skip(f"fused CPU kernel unavailable: {cpu.build_error()}")
    chained = []
    real = wrapper.chain_step
    monkeypatch.setattr(wrapper, "chain_step", lambda *a: chained.append(1) or real(*a))
    [row] = wrappers.run(["adam-fused"], shapes=[(8, 8)], rounds=2, warmup=0, ops=True)
    assert row.huber_pass_ratio > 0 and row.cautious_ops_ratio > 0
    assert len(chained) == 4  # huber and cautious, two rounds each
    assert "+ Huber, pass" in wrappers.format_table([row])
