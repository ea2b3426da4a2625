"""`compare --resume` with a changed optimizer spec: the changed spec is a new entrant in its own
folder (trained from step 0, reported alone); a spec whose folder holds another spec's finished
run is refused; two specs of one command never share a folder."""

from __future__ import annotations

import json

import pytest

from adamhd import cli
from adamhd.lab.optimizers import parse_specs
from tests.lab.test_cli import tiny_args


def test_resume_with_a_changed_spec_trains_a_new_entrant(tmp_path, works_dir, other_domain,
                                                          capsys):
    out = tmp_path / "out"
    args = tiny_args(out, works_dir, other_domain)
    args[args.index("--seeds") + 1] = "1"
    args[args.index("--steps") + 1] = "2"
    assert cli.main(args + ["--optimizers", "adamw"]) == 0
    old = (out / "runs" / "adamw" / "seed0" / "results.json").read_text()
    new_spec = "adamw:betas=(0.9,0.95)"
    assert cli.main(args + ["--optimizers", new_spec, "--resume"]) == 0
    [new] = parse_specs(new_spec)
    run = out / "runs" / new.slug / "seed0"
    assert new.slug != "adamw"
    assert json.loads((run / "results.json").read_text())["config"]["optimizer"] == new.label
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]
    assert (out / "runs" / "adamw" / "seed0" / "results.json").read_text() == old
    assert json.loads((out / "compare.json").read_text())["optimizers"] == [new.label]
    md = (out / "report.md").read_text()
    assert f"| {new.label} (n=1) |" in md and "| adamw (n=1) |" not in md
    # a spec written differently whose folder name is that run's: refused, not reused
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.main(args + ["--optimizers", "adamw:betas=[0.9,0.95]", "--resume"])
    assert exc.value.code == 2
    assert "finished run with other settings" in capsys.readouterr().err


def test_two_specs_of_one_command_never_share_a_folder():
    with pytest.raises(ValueError, match="same folder"):
        parse_specs("adamw:betas=(0.9,0.95),adamw:betas=[0.9,0.95]")
