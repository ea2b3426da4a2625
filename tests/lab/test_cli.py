import json

import pytest

from adamhd import cli
from adamhd.lab.optimizers import parse_specs


def tiny_args(out, works_dir, other_domain, *extra):
    return ["compare", "--steps", "6", "--seeds", "2", "--batch-size", "4", "--context", "16",
            "--eval-every", "2", "--data", str(works_dir), "--eval-data", str(other_domain),
            "--out", str(out), "--cache-dir", str(out.parent / "cache"), "--no-progress",
            "--device", "cpu", "--threads", "1", "--jobs", "1", "--grid-budgets", "none", *extra]


def test_compare_end_to_end_writes_the_report(tmp_path, works_dir, other_domain, capsys):
    out = tmp_path / "out"
    args = tiny_args(out, works_dir, other_domain)
    args[args.index("--grid-budgets") + 1] = "0.5"
    assert cli.main(args + ["--decay-budget", "1"]) == 0
    for name in ("report.md", "report.html", "val_loss.png", "pruning.png",
                 "weight_histograms.png", "small_weights.png", "gradient_tails.png",
                 "compare.json"):
        assert (out / name).is_file(), name
    md = (out / "report.md").read_text()
    assert "The paper's claims: adamhd vs adamw" in md
    for claim in ("| a |", "| a (steps) |", "| b |", "| c |", "| c (task) |", "| d |",
                  "| best vs best |"):
        assert claim in md
    assert "Regime: **decay at equilibrium**" in md and "Where the time went" in md
    assert (out / "sweep" / "sweep.md").is_file() and (out / "sweep" / "sweep.png").is_file()
    sweep = json.loads((out / "sweep" / "sweep.json").read_text())
    assert len(sweep["points"]) == 2 * 2 * 2  # 2 budgets x 2 entrants x 2 seeds
    assert "unigram entropy" in md and "![validation loss](val_loss.png)" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "src='val_loss.png'" not in html
    printed = capsys.readouterr().out
    assert "report:" in printed and "claim b:" in printed
    for seed in (0, 1):
        for slug in ("adamw", "adamhd"):
            path = out / "runs" / slug / f"seed{seed}" / "metrics.jsonl"
            rows = [json.loads(x) for x in path.read_text().splitlines()]
            assert sum(r["kind"] == "train" for r in rows) == 6

    # rebuilt from saved runs alone, identical
    before = md
    (out / "report.md").unlink()
    assert cli.main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == before

    # --resume on a finished comparison trains nothing and reports the same numbers
    results = (out / "runs" / "adamhd" / "seed1" / "results.json").read_text()
    assert cli.main(args + ["--decay-budget", "1", "--resume"]) == 0
    assert (out / "runs" / "adamhd" / "seed1" / "results.json").read_text() == results


def test_no_warmup_and_tensorboard_flags(tmp_path, works_dir, other_domain):
    """`--warmup 0` trains at the full lr from step 1 and the report says so; `--tensorboard`
    writes one event file per run."""
    out, board = tmp_path / "out", tmp_path / "tb"
    args = tiny_args(out, works_dir, other_domain, "--warmup", "0", "--tensorboard", str(board))
    args[args.index("--seeds") + 1] = "1"
    args[args.index("--steps") + 1] = "2"
    assert cli.main(args) == 0
    md = (out / "report.md").read_text()
    assert "**Without warm-up**" in md and "adamw, adamhd." in md
    assert "![gradient-tail statistics per layer over training](gradient_tails.png)" in md
    rows = [json.loads(x) for x in
            (out / "runs" / "adamhd" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if r["kind"] == "train"]
    assert lrs[0] == json.loads((out / "compare.json").read_text())["base_config"]["lr"]
    for slug in ("adamw", "adamhd"):
        assert len(list((board / slug / "seed0").glob("events.out.tfevents.*"))) == 1


def test_one_seed_says_no_interval(tmp_path, works_dir, other_domain):
    out = tmp_path / "out"
    args = tiny_args(out, works_dir, other_domain)
    args[args.index("--seeds") + 1] = "1"
    args[args.index("--steps") + 1] = "2"
    assert cli.main(args + ["--optimizers", "adamw,adamhd:delta_scale=2.0"]) == 0
    md = (out / "report.md").read_text()
    assert "none (n=1)" in md and "inconclusive at this scale" in md
    assert "adamhd:delta_scale=2.0 vs adamw" in md


@pytest.mark.parametrize("argv, message", [
    (["compare", "--steps", "0"], "must be >= 1"),
    (["compare", "--lr", "-1"], "must be > 0"),
    (["compare", "--model", "huge"], "invalid choice"),
    (["compare", "--optimizers", "lbfgs"], "unknown optimizer 'lbfgs'"),
    (["compare", "--optimizers", "adamhd:nope=1"], "adamhd has no option 'nope'"),
    (["compare", "--optimizers", "adamw,adamw"], "same entrant twice"),
    (["compare", "--data", "/no/such/corpus"], "no such file or folder"),
    (["report", "/no/such/dir"], "holds no compare.json"),
    (["compare", "--fsdp"], "--fsdp shards over several processes"),
])
def test_bad_arguments_get_clear_errors(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv + (["--out", str(tmp_path / "o"), "--no-progress"]
                         if argv[0] == "compare" else []))
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_optimizer_specs():
    specs = parse_specs("adamw, adamhd:delta_scale=2.0,decay_form=proximal,adamw:betas=(0.9,0.95)")
    assert [s.label for s in specs] == [
        "adamw", "adamhd:delta_scale=2.0,decay_form=proximal", "adamw:betas=(0.9, 0.95)"]
    assert specs[1].overrides == {"delta_scale": 2.0, "decay_form": "proximal"}
    assert specs[2].overrides == {"betas": (0.9, 0.95)}


def test_sweep_over_adamhd_options_end_to_end(tmp_path, works_dir):
    out = tmp_path / "sweep"
    argv = ["sweep", "--optimizers", "adamw,adamhd", "--lr", "1e-3,3e-3", "--delta-scale",
            "1.0,2.0", "--weight-decay", "0.1", "--steps", "2", "--batch-size", "4", "--context",
            "16", "--data", str(works_dir), "--out", str(out), "--cache-dir", str(tmp_path / "c"),
            "--no-progress", "--threads", "1", "--jobs", "1", "--seeds", "1"]
    assert cli.main(argv) == 0
    points = json.loads((out / "sweep.json").read_text())["points"]
    assert len(points) == 2 + 4  # adamw: 2 lrs; adamhd: 2 lrs x 2 delta_scales
    assert {p["entrant"] for p in points} == {"adamw", "adamhd:delta_scale=1.0",
                                              "adamhd:delta_scale=2.0"}
    table = (out / "sweep.md").read_text()
    assert table.count("| adamhd:delta_scale=") >= 4 and "Best vs best" in table
