"""``adamhd bench transforms`` runs end to end on a tiny parameter set (no timing claims)."""

from __future__ import annotations

import json
import math

from adamhd.bench import transforms as bench
from adamhd.transforms import TRANSFORMS


def test_run_reports_every_transform_and_lookahead():
    config = bench.BenchConfig(shapes=[(8, 4), (4,)], rounds=2, path="foreach")
    (result,) = bench.run(config, log=lambda msg: None)
    names = [row["name"] for row in result["rows"]]
    assert names[: 1 + len(TRANSFORMS)] == ["AdamHD", *TRANSFORMS]
    assert names[-1].startswith("Lookahead(AdamHD")
    for row in result["rows"]:
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0
    assert result["rows"][0]["ratio"] == 1.0 and result["rows"][-1]["state_bytes_per_param"] == 4
    assert "| agc |" in bench.format_table(result)


def test_main_writes_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "_shapes", lambda name, config: [(6, 3)])
    assert bench.main(["--rounds", "1", "--path", "single", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "transforms.json").read_text())
    assert report["command"] == "adamhd bench transforms"
    assert (tmp_path / "transforms.md").read_text().startswith("### gpt2-124m")
