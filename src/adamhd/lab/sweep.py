"""`adamhd sweep`: a grid over weight_decay (or decay budgets), lr and AdamHD's delta_scale /
delta_beta / decay_form, per entrant, on the same seeds; then the sweep report (sweep_report).

Every point of the grid is one run folder, <out>/runs/<entrant>_lr<lr>_wd<wd>/seed<k>, and
<out>/sweep.json lists them all. `--shard i/N` trains every N-th point from the i-th (any batch
scheduler can run the shards, in one shared folder or in separate ones), `--jobs N` trains N at
once in local worker processes, `--ray` on a Ray cluster; `adamhd report DIR [DIR...]` merges
the folders into the same report one process would write.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from adamhd.lab.data import load_corpus
from adamhd.lab.files import check_out_dirs, locked
from adamhd.lab.grid import corpus_key, grid_config
from adamhd.lab.jobs import Task, run_tasks, shard_of
from adamhd.lab.optimizers import REGISTRY, OptimizerSpec, parse_specs
from adamhd.lab.preflight import check_run_inputs
from adamhd.lab.regime import weight_decay_for
from adamhd.lab.train import RunConfig

OPTIMIZER_KEYS = ("delta_scale", "delta_beta", "decay_form")
SWEEP_FILE = "sweep.json"


@dataclass(frozen=True)
class Point:
    entrant: str
    lr: float
    weight_decay: float
    seed: int
    dir: str  # the run folder, relative to the sweep folder


def grid_specs(optimizers: str, grid: dict[str, list]) -> list[OptimizerSpec]:
    """Each entrant, times the values of the grid keys its optimizer takes."""
    out = []
    for spec in parse_specs(optimizers):
        accepted = REGISTRY[spec.name].accepted()
        keys = [k for k, v in grid.items() if v and k in accepted and k not in spec.overrides]
        for values in itertools.product(*(grid[k] for k in keys)):
            out.append(OptimizerSpec(spec.name,
                                     {**spec.overrides, **dict(zip(keys, values, strict=True))}))
    return out


def sweep_points(specs: list[OptimizerSpec], lrs, weight_decays, seeds: int, base: RunConfig,
                 budgets=None, scale_lr: bool = False) -> list[tuple[OptimizerSpec, Point]]:
    """Seed-major order (all of seed 0 first), so a partial sweep has whole seeds. `scale_lr`:
    each entrant's lrs are the grid times its registered lr_scale (the leaderboard)."""
    out = []
    for seed in range(seeds):
        for spec in specs:
            scale = REGISTRY[spec.name].lr_scale if scale_lr else 1.0
            for lr in (float(f"{x * scale:.6g}") for x in lrs):
                wds = weight_decays if budgets is None else \
                    [weight_decay_for(b, replace(base, lr=lr)) for b in budgets]
                for wd in wds:
                    name = f"{spec.slug}_lr{lr:g}_wd{wd:.4g}"
                    out.append((spec, Point(spec.label, lr, wd, seed,
                                            f"runs/{name}/seed{seed}")))
    return out


def sweep_meta(specs: list[OptimizerSpec], points: list[Point], base: RunConfig, seeds: int,
               corpus, argv: list[str]) -> dict:
    return {"kind": "sweep", "argv": argv, "entrants": [s.label for s in specs],
            "seeds": list(range(seeds)), "base_config": asdict(base),
            "corpus": corpus.describe(), "points": [asdict(p) for p in points]}


def write_sweep_meta(folder: Path, meta: dict) -> None:
    """Atomic: shards sharing a folder write the same file at once."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{SWEEP_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, folder / SWEEP_FILE)


def run_sweep(*, optimizers: str, lrs, weight_decays, grid: dict[str, list], seeds: int,
              base: RunConfig, out: str | Path, data: str = "shakespeare",
              tokenizer: str = "byte", bpe_vocab: int = 2048, cache_dir: str | None = None,
              resume: bool = False, progress: bool = True, threads: int | None = None,
              budgets=None, shard: tuple[int, int] | None = None, jobs: int = 1,
              use_ray: bool = False, argv: list[str] | None = None,
              build_report: bool = True, kind: str = "sweep") -> Path | None:
    """Train the grid (or this shard of it); return the report's path, or None for a shard.
    kind "leaderboard": the runs also measure the pruning curve, and the report ranks."""
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    out = check_out_dirs(out, cache_dir)
    specs = grid_specs(optimizers, grid)
    corpus = load_corpus(data, tokenizer=tokenizer, bpe_vocab=bpe_vocab, eval_sources=[],
                         cache_dir=cache_dir)
    base = replace(grid_config(base), corpus_key=corpus_key(corpus), optimizer="",
                   prune=kind == "leaderboard")
    pairs = sweep_points(specs, lrs, weight_decays, seeds, base, budgets,
                         scale_lr=kind == "leaderboard")
    for lr, wd in {(p.lr, p.weight_decay) for _, p in pairs}:
        check_run_inputs(replace(base, lr=lr, weight_decay=wd), specs, corpus)
    tasks = [Task(replace(base, optimizer=spec.label, lr=p.lr, weight_decay=p.weight_decay,
                          seed=p.seed), str(out / p.dir),
                  f"[{k}/{len(pairs)}] {spec.label} lr={p.lr:g} wd={p.weight_decay:.3g} "
                  f"seed {p.seed}") for k, (spec, p) in enumerate(pairs, 1)]
    meta = sweep_meta(specs, [p for _, p in pairs], base, seeds, corpus,
                      argv if argv is not None else sys.argv[1:])
    meta["kind"] = kind
    lock_name = ".lock" if shard is None else f".lock-shard-{shard[0]}-of-{shard[1]}"
    with locked(out, lock_name):
        write_sweep_meta(out, meta)
        run_tasks(shard_of(tasks, shard), corpus, resume=resume, progress=progress, jobs=jobs,
                  threads=threads, fresh=True, use_ray=use_ray)
    if shard is not None or not build_report:
        return None
    return build_any_report([out])


def build_any_report(folders: list[Path], out: Path | None = None) -> Path:
    """The sweep or leaderboard report of `folders` (the shards of one grid)."""
    from adamhd.lab.files import read_json

    kind = read_json(Path(folders[0]) / SWEEP_FILE).get("kind", "sweep")
    if kind == "leaderboard":
        from adamhd.lab.leaderboard import build_leaderboard_report

        return build_leaderboard_report(folders, out)
    from adamhd.lab.sweep_report import build_sweep_report

    return build_sweep_report(folders, out)
