"""`adamhd compare`: every entrant on every seed, same data / schedule / budget, then the report.

Everything is checked first (options, data, every entrant's optimizer); only then is --out
locked and touched. Runs are interleaved (seed 0: adamw, adamhd; seed 1: ...) so that a change
in the machine's load hits all entrants alike. With a weight-decay grid (`wd_grid`), the extra
points run after the main ones and form a sweep in <out>/sweep (the main runs are its centre),
from which the report takes "best vs best". Under torchrun every rank runs this, and rank 0
alone writes (see `dist`).
"""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from adamhd.lab import dist
from adamhd.lab.data import load_corpus
from adamhd.lab.files import check_out_dirs, locked
from adamhd.lab.grid import corpus_key, grid_config  # noqa: F401 (also this module's names)
from adamhd.lab.jobs import Task, run_tasks
from adamhd.lab.optimizers import parse_specs
from adamhd.lab.preflight import check_run_inputs
from adamhd.lab.sweep import Point, sweep_meta, write_sweep_meta
from adamhd.lab.train import RunConfig


def run_dir(out: Path, slug: str, seed: int) -> Path:
    return out / "runs" / slug / f"seed{seed}"


def run_compare(*, optimizers: str, seeds: int, base: RunConfig, out: str | Path,
                data: str = "shakespeare", eval_data: list[str] | None = None,
                tokenizer: str = "byte", bpe_vocab: int = 2048, cache_dir: str | None = None,
                resume: bool = False, progress: bool = True, threads: int | None = None,
                argv: list[str] | None = None, build_report: bool = True,
                fsdp: bool = False, jobs: int = 1, wd_grid: list[float] | None = None) -> Path:
    specs = parse_specs(optimizers)
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if jobs > 1 and dist.world() > 1:
        raise ValueError("--jobs runs several runs at once in one process's workers; under "
                         "torchrun each run already uses every process: leave --jobs at 1")
    out = check_out_dirs(out, cache_dir)
    grid = sorted({float(w) for w in wd_grid or []} - {base.weight_decay})
    eval_data = ["britannica"] if eval_data is None else eval_data
    started = time.time()
    corpus = _load_corpus(data, tokenizer=tokenizer, bpe_vocab=bpe_vocab,
                          eval_sources=eval_data, cache_dir=cache_dir)
    base = replace(base, corpus_key=corpus_key(corpus))
    for wd in [base.weight_decay, *grid]:
        check_run_inputs(replace(base, weight_decay=wd), specs, corpus)
    tasks, points = compare_tasks(specs, seeds, base, grid, out)
    meta = _compare_meta(argv if argv is not None else sys.argv[1:], specs, seeds, base, corpus,
                         data, eval_data, grid, jobs=jobs, fsdp=fsdp)
    sweep = (sweep_meta(specs, points, replace(grid_config(base), optimizer=""), seeds, corpus,
                        argv=meta["argv"]) if grid else None)
    with locked(out) if dist.is_main() else contextlib.nullcontext():
        _write_meta(out, meta, sweep)
        run_tasks(tasks, corpus, resume=resume, progress=progress, jobs=jobs, threads=threads
                  or (dist.default_threads() if dist.world() > 1 else None), fresh=True,
                  fsdp=fsdp)
        meta["threads"] = threads or (1 if jobs > 1 else torch.get_num_threads())
        meta["train_finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        meta["train_wall_seconds"] = time.time() - started
        if not dist.is_main():
            return out
        (out / "compare.json").write_text(json.dumps(meta, indent=1))
        if not build_report:
            return out
        from adamhd.lab.report import build_report as _build

        return _build(out)


def _load_corpus(data: str, **kwargs):
    """The corpus, loaded by rank 0 first (it fills the cache), then by the other ranks."""
    main = dist.is_main()
    if not main:
        dist.barrier()
    corpus = load_corpus(data, **kwargs)
    if main:
        dist.barrier()
    return corpus


def compare_tasks(specs, seeds: int, base: RunConfig, grid: list[float],
                  out: Path) -> tuple[list[Task], list[Point]]:
    """The runs, interleaved by seed: the main ones, then the weight-decay grid's (if any); and
    the sweep points they form (the main runs are the grid's centre)."""
    tasks, points = [], []
    for seed in range(seeds):
        for spec in specs:
            path = run_dir(out, spec.slug, seed)
            tasks.append(Task(replace(base, optimizer=spec.label, seed=seed), str(path),
                              f"{spec.label} seed {seed}"))
            points.append(Point(spec.label, base.lr, base.weight_decay, seed,
                                f"../runs/{spec.slug}/seed{seed}"))
    for seed in range(seeds):
        for wd in grid:
            for spec in specs:
                name = f"{spec.slug}_wd{wd:g}"
                cfg = replace(grid_config(base), optimizer=spec.label, seed=seed, weight_decay=wd)
                tasks.append(Task(cfg, str(out / "sweep" / "runs" / name / f"seed{seed}"),
                                  f"{spec.label} wd={wd:g} seed {seed}"))
                points.append(Point(spec.label, base.lr, wd, seed, f"runs/{name}/seed{seed}"))
    tasks = [replace(t, label=f"[{k}/{len(tasks)}] {t.label}") for k, t in enumerate(tasks, 1)]
    return tasks, points


def _compare_meta(argv: list[str], specs, seeds: int, base: RunConfig, corpus, data: str,
                  eval_data: list[str], grid: list[float], *, jobs: int, fsdp: bool) -> dict:
    """compare.json before the runs: the command, entrants, settings, corpus and machine."""
    return {
        "argv": argv,
        "optimizers": [s.label for s in specs],
        "slugs": {s.label: s.slug for s in specs},
        "seeds": list(range(seeds)),
        "base_config": asdict(base),
        "corpus": corpus.describe(),
        "data": data,
        "eval_data": eval_data,
        "wd_grid": [base.weight_decay, *grid] if grid else [],
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "processes": dist.world(),
        "jobs": jobs,
        "parallel": ("fsdp" if fsdp else "ddp") if dist.world() > 1 else "none",
    }


def _write_meta(out: Path, meta: dict, sweep: dict | None) -> None:
    """compare.json and, with a grid, the sweep's meta (rank 0; every rank waits first)."""
    dist.barrier()
    if dist.is_main():
        (out / "compare.json").write_text(json.dumps(meta, indent=1))
        if sweep is not None:
            write_sweep_meta(out / "sweep", sweep)
