"""`adamhd compare` under torchrun (2 processes, gloo, CPU) equals 1 process with the same global
batch: DDP by default, FSDP2 with --fsdp."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from adamhd import cli
from tests.lab.conftest import make_text

RUN = "runs/adamhd/seed0"


def compare_args(out, works_dir, other_domain) -> list[str]:
    return ["compare", "--optimizers", "adamhd", "--steps", "6", "--seeds", "1",
            "--batch-size", "4", "--context", "32", "--eval-every", "3", "--data", str(works_dir),
            "--eval-data", str(other_domain), "--out", str(out),
            "--cache-dir", str(out.parent / f"cache-{out.name}"), "--no-progress",
            "--device", "cpu", "--threads", "1", "--grid-budgets", "none", "--model", "tiny"]


def outcome(out) -> tuple[dict, list[dict], dict]:
    results = json.loads((out / RUN / "results.json").read_text())
    rows = [json.loads(line) for line in (out / RUN / "metrics.jsonl").read_text().splitlines()]
    weights = torch.load(out / RUN / "checkpoint.pt", weights_only=True)["model"]
    return results, rows, weights


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed_lab")
    works = root / "works"
    works.mkdir()
    for i in range(10):
        (works / f"work_{i:02d}.txt").write_text(make_text(i, 400))
    other = root / "other.txt"
    other.write_text(make_text(99, 600))
    return root, works, other


@pytest.fixture(scope="module")
def one_process(data):
    root, works, other = data
    old = torch.get_num_threads()
    try:
        assert cli.main(compare_args(root / "one", works, other)) == 0
    finally:
        torch.set_num_threads(old)
    return outcome(root / "one")


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one(mode, data, one_process):
    root, works, other = data
    want_results, want_rows, want_weights = one_process

    out = root / mode
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "adamhd.cli", *compare_args(out, works, other)]
    if mode == "fsdp":
        cmd.append("--fsdp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # 600 s: a loaded 2-core machine once took more than 180 s
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("report:") == 1  # rank 0 alone reports
    results, rows, weights = outcome(out)

    assert results["processes"] == 2 and want_results["processes"] == 1
    assert json.loads((out / "compare.json").read_text())["parallel"] == mode
    assert results["final_val_loss"] == pytest.approx(want_results["final_val_loss"], rel=1e-5)
    for name, d in want_results["domains"].items():
        assert results["domains"][name]["loss"] == pytest.approx(d["loss"], rel=1e-5)
    assert results["weights"]["all"]["mean_abs"] == pytest.approx(
        want_results["weights"]["all"]["mean_abs"], rel=1e-5)
    assert [r["kind"] for r in rows] == [r["kind"] for r in want_rows]
    for got, want in zip(rows, want_rows, strict=True):
        if got["kind"] == "tails":  # gradient-tail statistics of the gathered gradients
            assert got["layers"].keys() == want["layers"].keys()
            for layer, stats in want["layers"].items():
                for stat, value in stats.items():
                    assert got["layers"][layer][stat] == pytest.approx(value, rel=1e-3), stat
            continue
        key = "loss" if got["kind"] == "train" else "val_loss"
        assert got[key] == pytest.approx(want[key], rel=1e-5), got
        if got["kind"] == "train":
            assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)  # float32 sum
    assert weights.keys() == want_weights.keys()
    for name in want_weights:
        torch.testing.assert_close(weights[name], want_weights[name], atol=5e-5, rtol=1e-4,
                                   msg=name)


def test_global_batch_must_split_evenly(tmp_path, works_dir, other_domain, monkeypatch):
    from adamhd.lab import dist as lab_dist

    monkeypatch.setattr(lab_dist, "world", lambda: 2)
    args = compare_args(tmp_path / "odd", works_dir, other_domain)
    args[args.index("--batch-size") + 1] = "3"
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == 2
