"""`adamhd tune`: equal trials per entrant, resume after an interrupted trial, fresh seeds
disjoint from the tuning seeds, Ray on a local instance, bad arguments refused."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("optuna")
pytest.importorskip("scipy")  # the QMC sampler

from adamhd.cli import main  # noqa: E402
from adamhd.lab.data import load_corpus  # noqa: E402
from adamhd.lab.tune import (  # noqa: E402
    Cell,
    Interrupted,
    Plan,
    Settings,
    counted,
    load_study,
    make_scales,
    open_storage,
    run_plan,
    storage_url,
    tune_study,
)

TINY = dict(evals=4, final_evals=4, eval_windows=4, objective_windows=8, final_windows=8)


def _settings(**kw) -> Settings:
    scales = make_scales(["mini"], [12], batch=4, context=16)
    return Settings(scales=scales, trials=kw.pop("trials", 3), **{**TINY, **kw})


def _corpus(works_dir, tmp_path):
    return load_corpus(str(works_dir), cache_dir=tmp_path / "cache")


def _snapshot(url: str, settings: Settings, entrant: str) -> dict:
    """What a study decided: each counted trial's parameters, state, value, seed, and the
    re-runs."""
    storage = open_storage(url)
    study = load_study(settings, storage, settings.scales[0], entrant, create=False)
    trials = [(t.params, t.state.name, t.value, t.user_attrs.get("seed")) for t in counted(study)]
    finals = {k: (v["setting"], v["seed"], v["final_val_loss"], v["curve"])
              for k, v in study.user_attrs.items() if k.startswith("final:")}
    best = study.user_attrs.get("best")
    best = best and {k: v for k, v in best.items() if k != "number"}  # numbering may differ
    return {"trials": trials, "finals": finals, "best": best}


def test_equal_trials_per_entrant_and_fresh_seeds_disjoint(tmp_path, works_dir):
    settings = _settings(trials=3, tuning_seeds=(7,), fresh_seeds=(1, 2, 3))
    corpus = _corpus(works_dir, tmp_path)
    url = storage_url(str(tmp_path / "s.db"))
    plan = Plan(settings, url, ["adamw", "adam", "sgdw"])
    run_plan(plan, corpus)
    for entrant in ("adamw", "adam", "sgdw"):
        snap = _snapshot(url, settings, entrant)
        assert len(snap["trials"]) == 3  # the same budget for each
        assert {seed for *_, seed in snap["trials"]} == {7}
        finals = snap["finals"]
        if snap["best"] is None:  # every trial pruned or diverged: nothing to re-run
            assert finals == {}
            continue
        assert sorted(seed for _, seed, *_ in finals.values()) == [1, 2, 3]
        assert all(p == snap["best"]["params"] for p, *_ in finals.values())
        assert not {7} & {seed for _, seed, *_ in finals.values()}
    adam = _snapshot(url, settings, "adam")
    assert all(set(p) == {"lr"} for p, *_ in adam["trials"])  # adam declares no weight_decay

    from adamhd.lab.tune_report import write_report

    md = write_report(url, "cpu", tmp_path / "report").read_text()
    assert "3 of 3 (scale, entrant) cells complete" in md
    assert {"adamw", "adam", "sgdw"} <= {line.split(" | ")[1] for line in md.splitlines()
                                        if line.startswith("| ")}
    for name in ("results.json", "speedup.png", "curves_mini.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0


def test_resume_after_an_interrupted_trial_gives_the_same_study(tmp_path, works_dir):
    settings = _settings(trials=4)
    corpus = _corpus(works_dir, tmp_path)
    cell = Cell(settings.scales[0], "adamhd")
    whole = storage_url(str(tmp_path / "whole.db"))
    tune_study(settings, open_storage(whole), cell, corpus)

    broken = storage_url(str(tmp_path / "broken.db"))
    storage = open_storage(broken)
    tune_study(settings, storage, Cell(cell.scale, "adamhd"), corpus, max_trials=1)
    with pytest.raises(Interrupted):
        tune_study(settings, storage, cell, corpus, interrupt_after=6)
    tune_study(settings, open_storage(broken), cell, corpus)  # resume
    a, b = _snapshot(whole, settings, "adamhd"), _snapshot(broken, settings, "adamhd")
    assert a == b
    assert len(b["trials"]) == 4


def test_bad_arguments_are_refused_before_the_storage_is_written(tmp_path, works_dir, capsys):
    db = tmp_path / "sub" / "s.db"
    base = ["tune", "--storage", str(db), "--data", str(works_dir), "--cache-dir",
            str(tmp_path / "c"), "--scales", "mini", "--steps", "12", "--trials", "2"]
    for extra, words in [
        (["--fresh-seeds", "0,1,2"], "disjoint"),  # overlaps the tuning seed 0
        (["--fresh-seeds", "1,2"], "at least 3"),
        (["--optimizers", "adamw,nosuch"], "nosuch"),
        (["--scales", "huge"], "huge"),
        (["--steps", "2"], "fewer than"),
        (["--steps", "12,12,12"], "one per scale"),
        (["--context", "5000"], "context"),
        (["--study", "a/b"], "--study"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(base + extra)
        assert exc.value.code == 2
        assert words in capsys.readouterr().err
        assert not db.exists() and not db.parent.exists()


def test_a_storage_that_cannot_be_opened_is_named(tmp_path, works_dir, capsys):
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("not a database\n")
    tune = ["tune", "--data", str(works_dir), "--cache-dir", str(tmp_path / "c"), "--scales",
            "mini", "--steps", "12", "--trials", "2"]
    for argv, words in [
        ([*tune, "--storage", "nosuchdialect://host/db"],
         "adamhd tune: error: --storage nosuchdialect://host/db: Can't load plugin"),
        (["tune-report", "--storage", str(not_a_db), "--out", str(tmp_path / "r")],
         f"adamhd tune-report: error: --storage sqlite:///{not_a_db}: "
         "(sqlite3.DatabaseError) file is not a database"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err
    assert not_a_db.read_text() == "not a database\n"
    assert not (tmp_path / "r").exists()


def test_a_resume_with_other_settings_is_refused(tmp_path, works_dir, capsys):
    db = tmp_path / "s.db"
    base = ["tune", "--storage", str(db), "--data", str(works_dir), "--cache-dir",
            str(tmp_path / "c"), "--scales", "mini", "--steps", "10", "--batch-size", "2",
            "--context", "16", "--optimizers", "adam", "--trials", "1", "--fresh-seeds",
            "1,2,3"]
    assert main(base) == 0
    before = db.stat().st_mtime_ns
    with pytest.raises(SystemExit) as exc:
        main([*base[:-1], "4,5,6"])
    assert "fresh_seeds" in capsys.readouterr().err and exc.value.code == 2
    assert db.stat().st_mtime_ns == before


@pytest.mark.slow
def test_ray_on_a_local_instance_equals_in_process(tmp_path, works_dir):
    ray = pytest.importorskip("ray")
    settings = _settings(trials=2)
    corpus = _corpus(works_dir, tmp_path)
    here, there = (storage_url(str(tmp_path / n)) for n in ("here.db", "ray.db"))
    run_plan(Plan(settings, here, ["adamw", "adam"]), corpus)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")  # a local instance
    try:
        run_plan(Plan(settings, there, ["adamw", "adam"]), corpus, jobs=2, use_ray=True)
    finally:
        ray.shutdown()
    for entrant in ("adamw", "adam"):
        assert _snapshot(here, settings, entrant) == _snapshot(there, settings, entrant)


@pytest.mark.slow
def test_the_gpu_preset_runs_a_few_steps_on_cpu(tmp_path, works_dir):
    """--preset gpu: GPT-2-small (124M) at sequence 1024, bf16 autocast, torch.compile; here on
    the CPU, batch 1, 2 steps, one evaluation window."""
    from dataclasses import replace

    from adamhd.cli import build_parser
    from adamhd.lab.trial import run_trial
    from adamhd.lab.tune import run_config
    from adamhd.lab.tune_cli import settings_from_args

    args = build_parser().parse_args(["tune", "--preset", "gpu", "--data", "hf:wikitext"])
    settings, names = settings_from_args(args)
    assert [s.model for s in settings.scales] == ["small", "gpt2-124m"]
    assert {s.context for s in settings.scales} == {1024}
    assert (settings.device, settings.dtype, settings.compile) == ("cuda", "bfloat16", True)
    assert settings.prefix == "gpu" and names == sorted(names, key=names.index)

    for path in works_dir.iterdir():
        path.write_text(path.read_text() * 4)  # enough text for windows of 1024 tokens
    corpus = load_corpus(str(works_dir), cache_dir=tmp_path / "cache")
    cpu = replace(settings, device="cpu", eval_windows=1)
    scale = replace(settings.scales[1], steps=2, batch_size=1)
    cfg = run_config(cpu, scale, "adamw", {"lr": 1e-3, "weight_decay": 0.1}, 1, 2)
    assert (cfg.model, cfg.context, cfg.dtype, cfg.compile) == ("gpt2-124m", 1024, "bfloat16",
                                                                 True)
    res = run_trial(cfg, corpus, final_windows=1)
    assert res["params"] > 85_000_000  # 124M with a 50k vocabulary; 86M with bytes
    assert [s for s, _ in res["curve"]] == [0, 1, 2]
    assert math.isfinite(res["final_val_loss"]) and not res["diverged"]
    assert res["curve"][-1][1] < res["curve"][0][1]  # two steps at lr 1e-3 lower the loss


@pytest.mark.slow
def test_resume_after_kill_9_in_a_trial_gives_the_same_study(tmp_path, works_dir):
    """A worker process killed (SIGKILL) in the middle of a trial: the trial stays RUNNING in the
    storage; the next command sees that its process is gone, fails it and runs its parameters
    again, and the study ends as an uninterrupted one."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import optuna

    def args(db):
        return ["tune", "--storage", str(db), "--data", str(works_dir), "--cache-dir",
                str(tmp_path / "c"), "--scales", "mini", "--steps", "400", "--batch-size", "2",
                "--context", "16", "--optimizers", "adamw", "--trials", "2"]

    assert main(args(tmp_path / "whole.db")) == 0
    broken = tmp_path / "broken.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "adamhd.cli", *args(broken)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600  # a busy machine starts a process slowly
        while time.time() < deadline:  # wait for the second trial's first reported loss
            time.sleep(0.2)
            if not broken.exists():
                continue
            try:  # through open_storage: the worker may be creating the schema right now
                study = optuna.load_study(study_name="cpu/mini/adamw",
                                          storage=open_storage(storage_url(str(broken))))
            except KeyError:
                continue
            if any(t.number == 1 and t.intermediate_values for t in study.get_trials()):
                break
        else:
            pytest.fail("the worker never reached its second trial")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    study = optuna.load_study(study_name="cpu/mini/adamw", storage=storage_url(str(broken)))
    assert [t.state.name for t in study.get_trials()][1] == "RUNNING"  # left as it was
    assert main(args(broken)) == 0  # resume
    settings = _settings()
    a = _snapshot(storage_url(str(tmp_path / "whole.db")), settings, "adamw")
    b = _snapshot(storage_url(str(broken)), settings, "adamw")
    assert a == b and len(a["trials"]) == 2 and len(a["finals"]) == 3


def _final(seed, curve, loss):
    return {"seed": seed, "curve": curve, "final_val_loss": loss, "setting": {"lr": 1.0},
            "ms_per_step": 10.0, "state_bytes_per_param": 8.0, "diverged": False,
            "cpu_seconds": 1.0}


def test_report_numbers_by_hand():
    from adamhd.lab.tune_report import row, speedups, verdict_of

    settings = {"trials": 1, "fresh_seeds": [1, 2, 3]}
    trial = [{"state": "COMPLETE", "diverged": False}]
    base = {"trials": trial, "best": {"params": {"lr": 1.0}}, "finals": [
        _final(k, [[0, 5.0], [10, 3.0], [20, 2.0]], 2.0 + k / 100) for k in (1, 2, 3)]}
    cand = {"trials": trial, "best": {"params": {"lr": 1.0}}, "finals": [
        _final(1, [[0, 5.0], [10, 2.5], [20, 1.5]], 1.9),   # reaches 2.0 at step 15
        _final(2, [[0, 5.0], [10, 2.0], [20, 1.8]], 1.95),  # at step 10
        _final(3, [[0, 5.0], [10, 3.0], [20, 2.2]], 2.1)]}  # never
    s = speedups(base, cand)
    assert s[:2] == [pytest.approx(20 / 15), pytest.approx(2.0)] and math.isnan(s[2])
    r = row("x", cand, base, settings)
    diffs = [2.01 - 1.9, 2.02 - 1.95, 2.03 - 2.1]
    mean = sum(diffs) / 3
    sd = (sum((d - mean) ** 2 for d in diffs) / 2) ** 0.5
    assert r["diff"].mean == pytest.approx(mean)
    assert r["diff"].high - r["diff"].mean == pytest.approx(4.303 * sd / 3 ** 0.5)
    assert r["speedup"].mean == pytest.approx((20 / 15 + 2) / 2) and r["never"] == 1
    assert r["complete"] and verdict_of(r).startswith("undecided")


def test_an_error_in_one_study_is_kept_and_the_others_go_on(tmp_path, works_dir, monkeypatch):
    import adamhd.lab.tune as tune

    real = tune.run_trial

    def flaky(cfg, corpus, **kw):
        if cfg.optimizer.startswith("adam:") or cfg.optimizer == "adam":
            raise RuntimeError("broken entrant")
        return real(cfg, corpus, **kw)

    monkeypatch.setattr(tune, "run_trial", flaky)
    settings = _settings(trials=1)
    url = storage_url(str(tmp_path / "s.db"))
    run_plan(Plan(settings, url, ["adam", "adamw"]), _corpus(works_dir, tmp_path))
    storage = open_storage(url)
    broken = load_study(settings, storage, settings.scales[0], "adam", create=False)
    assert broken.user_attrs["error"] == "RuntimeError: broken entrant"
    assert [t.state.name for t in broken.get_trials()] == ["FAIL"]
    assert len(_snapshot(url, settings, "adamw")["trials"]) == 1


def test_open_storage_retries_when_another_process_wins_the_schema_race(tmp_path, monkeypatch):
    """The losing side of two processes creating one new database gets a constraint error from
    Optuna; open_storage tries again and returns the storage, and gives up after `attempts`
    with an error naming the storage."""
    import optuna
    from sqlalchemy.exc import IntegrityError

    real = optuna.storages.RDBStorage
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) < 3:
            raise IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE"))
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", flaky)
    url = storage_url(str(tmp_path / "race.db"))
    assert isinstance(open_storage(url), real) and len(calls) == 3
    calls.clear()
    with pytest.raises(ValueError, match="--storage sqlite:///.*race.db: .*UNIQUE") as exc:
        open_storage(url, attempts=2)
    assert isinstance(exc.value.__cause__, IntegrityError)
    assert len(calls) == 2


def test_open_storage_from_many_threads_at_once_on_a_new_file(tmp_path):
    import threading

    url = storage_url(str(tmp_path / "new.db"))
    errors, start = [], threading.Barrier(6)

    def open_one():
        start.wait()
        try:
            open_storage(url)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
