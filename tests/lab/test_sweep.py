import json

import pytest

from adamhd import cli
from adamhd.lab.stats import summarize
from adamhd.lab.sweep_report import Setting, best_setting, best_vs_best, good_range

LOSS = {  # (entrant, wd) -> losses for seeds 0, 1, 2
    ("adamw", 0.1): [2.50, 2.52, 2.49], ("adamw", 0.3): [2.505, 2.53, 2.50],
    ("adamw", 1.0): [2.56, 2.58, 2.55], ("adamw", 3.0): [2.70, 2.71, 2.69],
    ("adamhd", 0.1): [2.51, 2.52, 2.50], ("adamhd", 0.3): [2.49, 2.51, 2.48],
    ("adamhd", 1.0): [2.52, 2.53, 2.51], ("adamhd", 3.0): [2.60, 2.62, 2.59],
}


def rows():
    return [{"entrant": e, "lr": 3e-3, "weight_decay": wd, "seed": s, "final_val_loss": v}
            for (e, wd), vs in LOSS.items() for s, v in enumerate(vs)]


def test_best_setting_good_range_and_best_vs_best_by_hand():
    seeds = [0, 1, 2]
    assert best_setting(rows(), "adamw", seeds) == Setting("adamw", 3e-3, 0.1)
    assert best_setting(rows(), "adamhd", seeds) == Setting("adamhd", 3e-3, 0.3)
    # within +1% of the best mean: adamw 2.5033 * 1.01 = 2.528 -> 0.1, 0.3 (2.5117)
    assert good_range(rows(), Setting("adamw", 3e-3, 0.1), seeds) == [0.1, 0.3]
    # adamhd best 2.4933 -> limit 2.5183: 0.1 (2.51), 0.3, 1.0 (2.52 > limit? 2.52 > 2.5183)
    assert good_range(rows(), Setting("adamhd", 3e-3, 0.3), seeds) == [0.1, 0.3]
    assert good_range(rows(), Setting("adamhd", 3e-3, 0.3), seeds, tolerance=0.02) == \
        [0.1, 0.3, 1.0]
    b, c, eff = best_vs_best(rows(), "adamw", "adamhd", seeds)
    diffs = [x - y for x, y in zip(LOSS[("adamw", 0.1)], LOSS[("adamhd", 0.3)], strict=True)]
    want = summarize(diffs)
    assert (b.weight_decay, c.weight_decay) == (0.1, 0.3)
    assert eff.mean == pytest.approx(want.mean) and eff.low == pytest.approx(want.low)


def test_a_setting_missing_a_seed_cannot_be_best():
    rs = [r for r in rows() if not (r["entrant"] == "adamw" and r["weight_decay"] == 0.1
                                    and r["seed"] == 2)]
    assert best_setting(rs, "adamw", [0, 1, 2]).weight_decay == 0.3


def sweep_args(out, works_dir, cache, *extra):
    return ["sweep", "--optimizers", "adamw,adamhd", "--decay-budget", "0.3,3", "--seeds", "2",
            "--steps", "3", "--batch-size", "4", "--context", "16", "--data", str(works_dir),
            "--out", str(out), "--cache-dir", str(cache), "--no-progress", "--threads", "1",
            "--jobs", "1", "--eval-every", "3", *extra]


def test_shards_merge_into_the_single_process_report(tmp_path, works_dir):
    cache = tmp_path / "cache"
    whole = tmp_path / "whole"
    assert cli.main(sweep_args(whole, works_dir, cache)) == 0
    meta = json.loads((whole / "sweep.json").read_text())
    assert len(meta["points"]) == 2 * 2 * 2 and meta["seeds"] == [0, 1]
    md = (whole / "sweep.md").read_text()
    assert "Best vs best" in md and "good range" in md and (whole / "sweep.png").is_file()

    # 3 shards into separate folders (any scheduler), shard 2 with two local worker processes
    parts = [tmp_path / f"part{i}" for i in range(3)]
    for i, part in enumerate(parts):
        extra = ["--shard", f"{i}/3"] + (["--jobs", "2"] if i == 2 else [])
        assert cli.main(sweep_args(part, works_dir, cache, *extra)) == 0
        assert not (part / "sweep.md").exists()
    merged = tmp_path / "merged"
    assert cli.main(["report", *map(str, parts), "--out", str(merged)]) == 0
    assert (merged / "sweep.md").read_text() == md
    done = sorted(str(p.relative_to(part)) for part in parts
                  for p in part.glob("runs/*/seed*/results.json"))
    assert len(done) == 8 and len(set(done)) == 8


def test_partial_merge_names_the_missing_points(tmp_path, works_dir):
    part = tmp_path / "p"
    assert cli.main(sweep_args(part, works_dir, tmp_path / "c", "--shard", "0/4")) == 0
    assert cli.main(["report", str(part)]) == 0
    md = (part / "sweep.md").read_text()
    assert "Unfinished, left out (6)" in md


def test_shards_of_another_sweep_do_not_merge(tmp_path, works_dir, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli.main(sweep_args(a, works_dir, tmp_path / "c", "--shard", "0/2")) == 0
    args = sweep_args(b, works_dir, tmp_path / "c", "--shard", "1/2")
    args[args.index("--steps") + 1] = "2"
    assert cli.main(args) == 0
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", str(a), str(b)])
    assert exc.value.code == 2
    assert "describes another sweep" in capsys.readouterr().err


def test_a_matching_sweep_gives_compare_its_best_vs_best_row(tmp_path, works_dir, capsys):
    cache = tmp_path / "cache"
    sweep = tmp_path / "sweep"
    assert cli.main(sweep_args(sweep, works_dir, cache)) == 0
    out = tmp_path / "cmp"
    compare = ["compare", "--steps", "3", "--seeds", "2", "--batch-size", "4", "--context", "16",
               "--data", str(works_dir), "--eval-data", "none", "--out", str(out),
               "--cache-dir", str(cache), "--no-progress", "--threads", "1", "--jobs", "1",
               "--grid-budgets", "none", "--eval-every", "3"]
    assert cli.main(compare) == 0
    assert "| best vs best |" not in (out / "report.md").read_text()
    assert cli.main(["report", str(out), "--sweep", str(sweep)]) == 0
    md = (out / "report.md").read_text()
    assert "| best vs best |" in md and f"{sweep}/sweep.md" in md
    other = tmp_path / "other"
    args = sweep_args(other, works_dir, cache, "--shard", "0/8")
    args[args.index("--steps") + 1] = "2"
    assert cli.main(args) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["report", str(out), "--sweep", str(other)])
    assert "does not match this comparison (steps differ)" in capsys.readouterr().err
