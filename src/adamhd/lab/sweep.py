"""`adamhd sweep`: a grid over lr, weight_decay and AdamHD's delta_scale / delta_beta /
decay_form, each point trained for the same budget on the same seeds, ranked by validation loss.

Keys an entrant does not take (delta_scale for adamw) are not swept for it. Results go to
<out>/sweep.jsonl (one line per run) and <out>/sweep.md (the ranked table).
"""

from __future__ import annotations

import inspect
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path

from adamhd.lab.compare import corpus_key
from adamhd.lab.data import load_corpus
from adamhd.lab.optimizers import REGISTRY, OptimizerSpec, parse_specs
from adamhd.lab.stats import summarize
from adamhd.lab.train import RunConfig, torch_threads, train_run

OPTIMIZER_KEYS = ("delta_scale", "delta_beta", "decay_form")


def sweep_points(optimizers: str, lrs, weight_decays, grid: dict[str, list]):
    """(spec, lr, weight_decay) for every point of the grid, per entrant."""
    points = []
    for spec in parse_specs(optimizers):
        accepted = inspect.signature(REGISTRY[spec.name][1]).parameters
        keys = [k for k, v in grid.items() if v and k in accepted and k not in spec.overrides]
        for values in itertools.product(*(grid[k] for k in keys)):
            over = {**spec.overrides, **dict(zip(keys, values, strict=True))}
            for lr, wd in itertools.product(lrs, weight_decays):
                points.append((OptimizerSpec(spec.name, over), lr, wd))
    return points


def run_sweep(*, optimizers: str, lrs, weight_decays, grid: dict[str, list], seeds: int,
              base: RunConfig, out: str | Path, data: str = "shakespeare",
              tokenizer: str = "byte", bpe_vocab: int = 2048, cache_dir: str | None = None,
              resume: bool = False, progress: bool = True, threads: int | None = None) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(data, tokenizer=tokenizer, bpe_vocab=bpe_vocab, eval_sources=[],
                         cache_dir=cache_dir)
    base = replace(base, corpus_key=corpus_key(corpus), prune=False)
    points = sweep_points(optimizers, lrs, weight_decays, grid)
    rows = []
    with torch_threads(threads), open(out / "sweep.jsonl", "w") as log:
        for i, (spec, lr, wd) in enumerate(points, 1):
            for seed in range(seeds):
                cfg = replace(base, optimizer=spec.label, lr=lr, weight_decay=wd, seed=seed)
                name = f"{spec.slug}_lr{lr:g}_wd{wd:g}"
                res = train_run(cfg, corpus, out / "runs" / name / f"seed{seed}", resume=resume,
                                progress=progress,
                                label=f"[{i}/{len(points)}] {spec.label} lr={lr:g} wd={wd:g}")
                row = {"entrant": spec.label, "optimizer": spec.name, **spec.overrides,
                       "lr": lr, "weight_decay": wd, "seed": seed,
                       "final_val_loss": res["final_val_loss"],
                       "final_val_ppl": res["final_val_ppl"],
                       "seconds_per_step": res["seconds_per_step"]}
                rows.append(row)
                log.write(json.dumps(row) + "\n")
                log.flush()
    (out / "sweep.md").write_text(sweep_table(rows, base, seeds))
    return out / "sweep.md"


def sweep_table(rows: list[dict], base: RunConfig, seeds: int) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["entrant"], r["lr"], r["weight_decay"]), []).append(r)
    ranked = sorted(groups.items(),
                    key=lambda kv: summarize(r["final_val_loss"] for r in kv[1]).mean)
    lines = [
        f"# Sweep ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"Model `{base.model}`, {base.steps} steps x batch {base.batch_size} x context "
        f"{base.context}, {seeds} seed(s) per point; ranked by final validation loss "
        "(mean [95% interval] over seeds). With one seed per point there is no interval: "
        "differences smaller than the seed-to-seed spread of a `compare` run mean nothing.",
        "",
        "| rank | entrant | lr | weight_decay | final val loss | val ppl |",
        "|---|---|---|---|---|---|",
    ]
    for rank, ((entrant, lr, wd), rs) in enumerate(ranked, 1):
        loss = summarize(r["final_val_loss"] for r in rs).fmt(4)
        ppl = summarize(r["final_val_ppl"] for r in rs).fmt(3)
        lines.append(f"| {rank} | {entrant} | {lr:g} | {wd:g} | {loss} | {ppl} |")
    return "\n".join(lines) + "\n"
