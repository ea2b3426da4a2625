"""Bad input and concurrency: one `adamhd ...: error:` line naming what is wrong, raised before
--out is touched (issue 12 item 11)."""

import json
import os
import socket

import pytest

from adamhd import cli
from adamhd.lab.files import locked


def tiny(out, works_dir, *extra):
    return ["compare", "--steps", "2", "--seeds", "1", "--batch-size", "4", "--context", "16",
            "--data", str(works_dir), "--eval-data", "none", "--out", str(out), "--cache-dir",
            str(out.parent / "cache"), "--no-progress", "--threads", "1", "--jobs", "1",
            "--grid-budgets", "none", *extra]


def error_of(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def snapshot(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("late", [
    ["--optimizers", "adamw,adamhd:delta_scale=abc"],
    ["--dtype", "float16", "--device", "cpu"],
    ["--context", "5000"],
    ["--optimizers", "adamw,adamhd:betas=(0.9,2.0)"],
])
def test_a_rejected_option_leaves_earlier_results_intact(late, tmp_path, works_dir, capsys):
    out = tmp_path / "out"
    assert cli.main(tiny(out, works_dir)) == 0
    before = snapshot(out)
    capsys.readouterr()
    line = error_of(tiny(out, works_dir, *late), capsys)
    assert line.startswith("adamhd compare: error:")
    assert snapshot(out) == before  # runs, compare.json and report untouched


def test_a_second_command_on_the_same_out_is_refused_naming_the_holder(tmp_path, works_dir,
                                                                        capsys):
    out = tmp_path / "out"
    with locked(out):
        line = error_of(tiny(out, works_dir), capsys)
    assert f"is in use by pid {os.getpid()} on host {socket.gethostname()}" in line
    assert not (out / "compare.json").exists()
    assert cli.main(tiny(out, works_dir)) == 0  # released: the next command runs


@pytest.mark.parametrize("content, where", [
    (b"good line\nsecond \x00\x01 binary\n",
     "binary file, not text (NUL byte at line 2, column 8)"),
    ("ok\nna\u00efve caf\u00e9\n".encode("latin-1"),
     "not UTF-8 text: byte 0xef at line 2, column 3"),
])
def test_binary_or_non_utf8_data_is_refused_naming_file_and_line(content, where, tmp_path,
                                                                   works_dir, capsys):
    bad = works_dir / "work_99.txt"
    bad.write_bytes(content)
    line = error_of(tiny(tmp_path / "out", works_dir), capsys)
    assert str(bad) in line and where in line
    assert not (tmp_path / "out").exists()


def test_bad_paths_and_damaged_files_name_the_file(tmp_path, works_dir, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "--out" in error_of(tiny(afile, works_dir), capsys) and str(afile) in \
        error_of(tiny(afile, works_dir), capsys)
    line = error_of(tiny(tmp_path / "o", works_dir, "--cache-dir", str(afile / "sub")), capsys)
    assert "--cache-dir" in line and "is a file, not a folder" in line

    out = tmp_path / "out"
    assert cli.main(tiny(out, works_dir)) == 0
    meta = json.loads((out / "compare.json").read_text())
    del meta["slugs"]
    (out / "compare.json").write_text(json.dumps(meta))
    line = error_of(["report", str(out)], capsys)
    assert f"{out / 'compare.json'}: missing key(s) 'slugs'" in line
    meta["slugs"] = {"adamw": "adamw", "adamhd": "adamhd"}
    (out / "compare.json").write_text(json.dumps(meta))
    metrics = out / "runs" / "adamhd" / "seed0" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines[2] = lines[2][:-5]
    metrics.write_text("\n".join(lines) + "\n")
    assert f"{metrics}: line 3: not valid JSON" in error_of(["report", str(out)], capsys)
    (out / "compare.json").write_text("{\n  \"optimizers\": [\n")
    assert f"{out / 'compare.json'}: line 3: not valid JSON" in \
        error_of(["report", str(out)], capsys)


@pytest.mark.parametrize("argv, message", [
    (["compare", "--lr", "inf"], "--lr: must be a finite number, got 'inf'"),
    (["compare", "--lr", "nan"], "must be a finite number"),
    (["compare", "--warmup", "-5"], "--warmup: must be >= 0, got -5"),
    (["compare", "--steps", "10", "--warmup", "11"], "warmup must be between 0 and steps"),
    (["compare", "--decay-budget", "-1"], "--decay-budget: must be >= 0"),
    (["compare", "--weight-decay", "0.1", "--decay-budget", "1"], "not allowed with argument"),
    (["compare", "--context", "100000"], "--context 100000 is longer than model 'mini' takes"),
    (["compare", "--jobs", "0"], "--jobs: must be >= 1"),
    (["compare", "--grid-budgets", "0.1,inf"], "--grid-budgets: must be a finite number"),
    (["compare", "--grid-budgets", "0.1,-1"], "--grid-budgets: must be >= 0"),
    (["sweep", "--shard", "3/3"], "--shard expects i/N with 0 <= i < N"),
    (["sweep", "--shard", "x"], "--shard expects i/N"),
    (["bench", "step", "--layers", "0"], "--layers: must be >= 1, got 0"),
    (["bench", "step", "--rounds", "0"], "--rounds: must be >= 1, got 0"),
    (["bench", "step", "--paths", "single,nosuch"],
     "unknown value 'nosuch'; choose from single, foreach, fused"),
    (["bench", "step", "--sets", "huge"], "unknown value 'huge'"),
    (["bench", "step", "--options", "state_dtype=int9"],
     "--options: 'state_dtype=int9': state_dtype must be one of"),
    (["bench", "step", "--options", "cautious=True,bogus=1"],
     "--options: 'bogus=1': AdamHD.__init__() got an unexpected keyword argument 'bogus'"),
    (["bench", "step", "--options", "cautious"],
     "--options: 'cautious': 'cautious' is not key=value"),
    (["bench", "loads", "--optimizers", "nsgda,nosuch"], "--optimizers: unknown nosuch"),
    (["bench", "loads", "--params", "0"], "--params: must be >= 1, got 0"),
    (["bench", "memory", "--threads", "-1"], "--threads: must be >= 0, got -1"),
    (["bench", "memory", "--n-embd", "0"], "--n-embd: must be >= 1, got 0"),
    (["bench", "memory", "--vocab", "0"], "--vocab: must be >= 1, got 0"),
    (["bench", "rules", "--warmup", "-1"], "--warmup: must be >= 0, got -1"),
    (["bench", "decay", "--rounds", "0"], "--rounds: must be >= 1, got 0"),
    (["bench", "transforms", "--layers", "0"], "--layers: must be >= 1, got 0"),
    (["bench", "lowbit", "--steps", "abc"], "--steps: positive step numbers, comma-separated"),
    (["bench", "lowbit", "--steps", "10,0"], "--steps: positive step numbers, comma-separated"),
])
def test_argument_ranges(argv, message, tmp_path, works_dir, capsys):
    if argv[0] != "bench":
        argv = argv + ["--out", str(tmp_path / "o"), "--data", str(works_dir), "--cache-dir",
                       str(tmp_path / "c"), "--no-progress", "--jobs", "1"] \
            if "--jobs" not in argv else argv + ["--out", str(tmp_path / "o")]
    line = error_of(argv, capsys)
    assert message in line and line.startswith("adamhd")
    assert not (tmp_path / "o").exists()


def test_lab_json_files_name_the_file_the_line_and_what_is_wrong(tmp_path):
    from adamhd.lab.files import LabFileError, read_json, read_jsonl

    rows = tmp_path / "m.jsonl"
    rows.write_text('{"kind": "eval", "step": 1}\n\n{"kind": "train", "step": 2}\n')
    assert read_jsonl(rows, ("kind",)) == [{"kind": "eval", "step": 1},
                                           {"kind": "train", "step": 2}]
    rows.write_text('{"kind": "eval"}\n\n[1, 2]\n')
    with pytest.raises(LabFileError, match=r"m\.jsonl: line 3: expected a JSON object, found list"):
        read_jsonl(rows)
    rows.write_text('{"kind": "eval"}\n{"step": 2}\n')
    with pytest.raises(LabFileError, match=r"m\.jsonl: line 2: missing key\(s\) 'kind'$"):
        read_jsonl(rows, ("kind",))
    rows.write_bytes(b'{"kind": "caf\xe9"}\n')
    with pytest.raises(LabFileError, match=r"m\.jsonl: not UTF-8 text"):
        read_jsonl(rows)
    meta = tmp_path / "c.json"
    meta.write_text("[]")
    with pytest.raises(LabFileError, match=r"c\.json: expected a JSON object, found list"):
        read_json(meta)
    meta.write_text('{"a": 1}')
    assert read_json(meta, ("a",)) == {"a": 1}
    with pytest.raises(LabFileError, match=r"c\.json: missing key\(s\) 'b'; it was written by "
                                           "another version, or edited"):
        read_json(meta, ("a", "b"))
