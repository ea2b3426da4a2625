"""`adamhd leaderboard`: every registered entrant (or a list) on the same data, seeds and budget,
each at its own best lr from a small grid, ranked by final validation loss.

It is a sweep over lr (weight_decay fixed, or solved from a decay budget per lr) whose runs also
measure the pruning curve; the report ranks each entrant at its best lr: final loss with
interval, paired difference from AdamW (each at its best lr, same seeds), steps to AdamW's final
loss, optimizer-state bytes per parameter, step time and prunable sparsity, plus one plot of all
loss curves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from adamhd.lab.claims import crossing
from adamhd.lab.files import read_jsonl
from adamhd.lab.optimizers import REGISTRY, parse_spec
from adamhd.lab.stats import paired, summarize, verdict
from adamhd.lab.sweep_report import best_setting, by_setting, write_grid_report

BASELINE = "adamw"


def _evals(row: dict) -> list[dict]:
    return [r for r in read_jsonl(Path(row["run_dir"]) / "metrics.jsonl", ("kind", "step"))
            if r["kind"] == "eval"]


def standings(meta: dict, rows: list[dict]) -> list[dict]:
    """One record per entrant at its best lr, ranked by mean final validation loss."""
    seeds = meta["seeds"]
    cells = by_setting(rows)
    best = {e: best_setting(rows, e, seeds) for e in meta["entrants"]}
    base = best.get(BASELINE) or best.get(meta["entrants"][0])
    by_key = {(r["entrant"], r["lr"], r["weight_decay"], r["seed"]): r for r in rows}
    out = []
    for entrant, s in best.items():
        if s is None:
            continue
        runs = [by_key[(entrant, s.lr, s.weight_decay, k)] for k in seeds]
        rec = {"entrant": entrant, "lr": s.lr, "weight_decay": s.weight_decay,
               "loss": summarize(cells[s][k] for k in seeds), "runs": runs}
        if base is not None:
            rec["diff"] = paired([cells[base][k] for k in seeds], [cells[s][k] for k in seeds])
            ratios = []
            for k, run in zip(seeds, runs, strict=True):
                base_run = by_key[(base.entrant, base.lr, base.weight_decay, k)]
                base_evals = _evals(base_run)  # the periodic curve: the same windows
                target = base_evals[-1]["val_loss"]
                t_base = crossing(base_evals, target, "step")
                t_cand = crossing(_evals(run), target, "step")
                if t_cand is None:
                    ratios.append(np.nan)  # never reached it
                elif t_base == 0:  # the baseline ended no better than it started
                    ratios.append(1.0 if t_cand == 0 else np.inf)
                else:
                    ratios.append(t_cand / t_base)
            rec["steps_ratio"] = ratios
        out.append(rec)
    return sorted(out, key=lambda r: r["loss"].mean)


def _res(rec: dict, key: str, default=np.nan) -> list:
    return [run["results"].get(key, default) for run in rec["runs"]]


def leaderboard_blocks(meta: dict, rows: list[dict], missing: list[str], fig: Path | None):
    cfg, seeds = meta["base_config"], meta["seeds"]
    lrs = sorted({r["lr"] for r in rows})
    blocks = [("h", 1, "Leaderboard: every entrant at its best lr")]
    blocks.append(("p", f"Model `{cfg['model']}`, {cfg['steps']} steps x batch "
                   f"{cfg['batch_size']} x context {cfg['context']}, the same {len(seeds)} "
                   f"seed(s) for every entrant; each at its best lr of {', '.join(map(str, lrs))}"
                   f" (weight_decay as listed). Intervals: 95% Student-t over seeds; "
                   f"differences paired by seed."))
    if missing:
        blocks.append(("p", f"**Unfinished, left out ({len(missing)}):** " + ", ".join(missing)))
    table = []
    for rank, rec in enumerate(standings(meta, rows), 1):
        diff = rec.get("diff")
        ratios = [x for x in rec.get("steps_ratio", []) if not np.isnan(x)]
        never = len(rec.get("steps_ratio", [])) - len(ratios)
        steps = (f"{100 * np.mean(ratios):.0f}%" if ratios else "never") + \
            (f" ({never} seed(s) never)" if never and ratios else "")
        sparsity = [run["results"].get("pruning", {}).get("global", {}).get("max_sparsity")
                    for run in rec["runs"]]
        v = verdict(diff)[0] if diff is not None and diff.has_interval else "n/a"
        table.append([
            str(rank), rec["entrant"], f"{rec['lr']:g}", f"{rec['weight_decay']:.3g}",
            rec["loss"].fmt(4),
            "n/a" if diff is None else
            (diff.fmt(4) if diff.has_interval else f"{diff.mean:+.4f}") + f" ({v})",
            steps,
            f"{np.mean(_res(rec, 'optimizer_state_bytes_per_param', np.nan)):.1f}",
            f"{1000 * np.mean(_res(rec, 'seconds_per_step')):.0f}",
            "n/a" if None in sparsity else summarize(sparsity).fmt(1, 100, "%"),
        ])
    blocks.append(("table", ["rank", "entrant", "best lr", "weight_decay", "final val loss",
                             f"{BASELINE} minus entrant (positive: better)",
                             f"steps to {BASELINE}'s final loss (of {BASELINE}'s)",
                             "optimizer state bytes/param", "ms/step",
                             "prunable sparsity (global, <= +1% loss)"], table))
    notes = [f"{name}: {REGISTRY[parse_spec(name).name].note}" for name in meta["entrants"]
             if parse_spec(name).name in REGISTRY and REGISTRY[parse_spec(name).name].note]
    if notes:
        blocks.append(("ul", notes))
    blocks.append(("p", "Step time is measured on a machine that may be shared: small "
                   "differences are noise. State bytes are the optimizer's state tensors over "
                   "the model's parameters (fp32 moments: 8 bytes for Adam-type)."))
    if fig:
        blocks.append(("img", fig, "validation loss of every entrant"))
    return blocks


def fig_curves(meta: dict, rows: list[dict], path: Path) -> None:
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.subplots()
    recs = standings(meta, rows)
    cmap = __import__("matplotlib").colormaps["tab20"]
    for i, rec in enumerate(recs):
        curves = [_evals(run) for run in rec["runs"]]
        steps = [e["step"] for e in curves[0]]
        mean = np.mean([[e["val_loss"] for e in c] for c in curves], axis=0)
        ax.plot(steps, mean, color=cmap(i % 20), lw=1.5,
                label=f"{i + 1}. {rec['entrant']} (lr {rec['lr']:g})")
    finals = [r["loss"].mean for r in recs]
    if finals:
        ax.set_ylim(min(finals) - 0.05, min(finals) + 1.0)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/token, mean over seeds)")
    ax.set_title("every entrant at its best lr")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=110)


def build_leaderboard_report(folders: list[Path], out: Path | None = None) -> Path:
    return write_grid_report(folders, out, "leaderboard", fig_curves, leaderboard_blocks,
                             "AdamHD lab leaderboard")
