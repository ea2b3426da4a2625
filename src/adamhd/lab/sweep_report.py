"""The sweep report: final validation loss against weight_decay per entrant (intervals over
seeds), each entrant's best setting, best vs best paired by seed, and the width of the good range.

`build_sweep_report(folders)` reads sweep.json and the runs' results.json from one folder or from
several shard folders (merged: the report is the one a single process would write).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from adamhd.lab.files import LabFileError, read_json
from adamhd.lab.regime import Regime
from adamhd.lab.render import render_html, render_md
from adamhd.lab.settings import (  # noqa: F401 (the names this module had)
    GOOD_TOLERANCE,
    Setting,
    best_setting,
    best_vs_best,
    best_vs_best_verdict,
    by_setting,
    good_range,
)
from adamhd.lab.stats import summarize
from adamhd.lab.train import config_from_dict

_IGNORED = ("argv",)  # may differ between the shards of one sweep


def _settings(meta: dict) -> dict:
    """What shards of one sweep must share: all but the command line and where each machine
    writes its TensorBoard events."""
    out = {k: v for k, v in meta.items() if k not in _IGNORED}
    out["base_config"] = {k: v for k, v in meta["base_config"].items() if k != "tensorboard"}
    return out


def load_sweep(folders: list[Path]) -> tuple[dict, list[dict], list[str]]:
    """(meta, rows, missing): one row per finished point (its fields + the results), merged over
    `folders`; `missing` names the unfinished points."""
    if not folders:
        raise LabFileError("name at least one sweep folder")
    metas = []
    for folder in folders:
        if not (Path(folder) / "sweep.json").is_file():
            raise LabFileError(f"{folder}: holds no sweep.json: not the --out folder of a sweep")
        metas.append(read_json(Path(folder) / "sweep.json",
                               ("entrants", "seeds", "base_config", "corpus", "points")))
    ref = _settings(metas[0])
    for folder, meta in zip(folders[1:], metas[1:], strict=True):
        if _settings(meta) != ref:
            raise LabFileError(f"{folder}/sweep.json describes another sweep than "
                               f"{folders[0]}/sweep.json: shards must share every setting")
    rows, missing = [], []
    for point in metas[0]["points"]:
        found = [Path(f) / point["dir"] / "results.json" for f in folders]
        found = [p for p in found if p.is_file()]
        if not found:
            missing.append(f"{point['entrant']} lr={point['lr']:g} "
                           f"wd={point['weight_decay']:.3g} seed {point['seed']}")
            continue
        res = read_json(found[0], ("final_val_loss",))
        rows.append({**point, "final_val_loss": res["final_val_loss"], "results": res,
                     "run_dir": str(found[0].parent)})
    return metas[0], rows, missing


# ----------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------
# Figure and document


def fig_sensitivity(meta: dict, rows: list[dict], path: Path) -> None:
    seeds = meta["seeds"]
    fig = Figure(figsize=(7.5, 4.6), layout="constrained")
    ax = fig.subplots()
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    cells = by_setting(rows)
    lrs = sorted({s.lr for s in cells})
    for k, entrant in enumerate(meta["entrants"]):
        for j, lr in enumerate(lrs):
            pts = sorted((s.weight_decay, v) for s, v in cells.items()
                         if s.entrant == entrant and s.lr == lr and set(seeds) <= set(v))
            if not pts:
                continue
            sums = [summarize(v[x] for x in seeds) for _, v in pts]
            wd = np.array([w for w, _ in pts])
            mean = np.array([s.mean for s in sums])
            err = None
            if sums[0].has_interval:
                err = np.array([[s.mean - s.low for s in sums], [s.high - s.mean for s in sums]])
            label = entrant + (f" lr={lr:g}" if len(lrs) > 1 else "")
            ax.errorbar(wd * (1 + 0.03 * k), mean, yerr=err, color=colors[k % len(colors)],
                        ls=["-", "--", ":", "-."][j % 4], marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("weight_decay (log scale)")
    ax.set_ylabel("final validation loss (nats/token)")
    ax.set_title(f"sensitivity to weight_decay: mean over {len(seeds)} seed(s)"
                 + (", 95% interval" if len(seeds) > 1 else ""))
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.savefig(path, dpi=110)


def sweep_blocks(meta: dict, rows: list[dict], missing: list[str], fig_name: str | None):
    seeds, entrants = meta["seeds"], meta["entrants"]
    cfg = meta["base_config"]
    blocks = [("h", 1, "Sweep: final validation loss against weight_decay")]
    blocks.append(("p", f"Model `{cfg['model']}`, {cfg['steps']} steps x batch "
                   f"{cfg['batch_size']} x context {cfg['context']}, corpus "
                   f"{meta['corpus']['name']}; {len(seeds)} seed(s) per point, the same seeds "
                   "for every point (paired). Intervals: 95% Student-t over seeds."))
    if missing:
        blocks.append(("p", f"**Unfinished, left out ({len(missing)}):** " + ", ".join(missing)))
    cells = by_setting(rows)
    blocks.append(("table", ["entrant", "lr", "weight_decay", "decay budget",
                             "final val loss", "seeds done"], _points_table(meta, cells)))
    blocks += _best_blocks(rows, cells, entrants, seeds)
    if len(entrants) > 1:
        blocks += _best_vs_best_blocks(rows, entrants, seeds)
    if fig_name:
        blocks.append(("img", fig_name, "final validation loss vs weight_decay"))
    return blocks


def _points_table(meta: dict, cells: dict) -> list[list[str]]:
    """One row per setting of the grid: its regime and its loss over the seeds done."""
    seeds, entrants, cfg = meta["seeds"], meta["entrants"], meta["base_config"]
    table = []
    for s in sorted(cells, key=lambda s: (entrants.index(s.entrant) if s.entrant in entrants
                                          else 99, s.lr, s.weight_decay)):
        v = cells[s]
        regime = Regime.of(config_from_dict({**cfg, "lr": s.lr, "weight_decay": s.weight_decay}))
        table.append([s.entrant, f"{s.lr:g}", f"{s.weight_decay:.4g}", f"{regime.budget:.3g}",
                      summarize(v[k] for k in sorted(v)).fmt(4), f"{len(v)}/{len(seeds)}"])
    return table


def _best_blocks(rows: list[dict], cells: dict, entrants: list[str], seeds) -> list:
    """Each entrant at its best setting, with the width of its good weight_decay range."""
    best_rows = [_best_row(rows, cells, entrant, seeds) for entrant in entrants]
    return [("h", 2, "Each entrant at its best"),
            ("table", ["entrant", "best setting", "final val loss", "good range "
                       "(weight_decay within +1% of best, at the best lr)", "tolerance"],
             best_rows),
            ("p", "The good range is measured on this grid only: its width is at least "
             "the grid's spacing when one point qualifies, and a wider grid could widen it.")]


def _best_row(rows: list[dict], cells: dict, entrant: str, seeds) -> list[str]:
    best = best_setting(rows, entrant, seeds)
    if best is None:
        return [entrant, "n/a (no setting finished on every seed)", "", "", ""]
    wds = good_range(rows, best, seeds)
    loss = summarize(cells[best][k] for k in seeds)
    width = f"x{wds[-1] / wds[0]:.3g} ({wds[0]:.3g} .. {wds[-1]:.3g})" if wds[0] > 0 else \
        f"{wds[0]:.3g} .. {wds[-1]:.3g}"
    grid_wds = [c.weight_decay for c in cells if c.entrant == entrant and c.lr == best.lr]
    edge = len(grid_wds) > 1 and best.weight_decay in (min(grid_wds), max(grid_wds))
    note = " (at the edge of the grid: the best may lie outside it)" if edge else ""
    return [entrant, f"lr {best.lr:g}, weight_decay {best.weight_decay:.4g}{note}",
            loss.fmt(4), f"{len(wds)} grid point(s): {width}", f"{100 * GOOD_TOLERANCE:g}%"]


def _best_vs_best_blocks(rows: list[dict], entrants: list[str], seeds) -> list:
    """Each candidate at its best against the baseline (the first entrant) at its best."""
    base = entrants[0]
    rows_bvb = []
    for cand in entrants[1:]:
        b, c, eff = best_vs_best(rows, base, cand, seeds)
        if eff is None:
            rows_bvb.append([f"{cand} vs {base}", "n/a", "n/a", "n/a"])
            continue
        v, why = best_vs_best_verdict(eff)
        rows_bvb.append([f"{cand} (wd {c.weight_decay:.3g}) vs {base} (wd "
                         f"{b.weight_decay:.3g})", f"{eff.mean:+.4f}",
                         "none (n=1)" if not eff.has_interval else
                         f"[{eff.low:+.4f}, {eff.high:+.4f}]", f"**{v}** ({why})"])
    return [("h", 2, "Best vs best (paired by seed)"),
            ("p", "Effect: the baseline's final validation loss at its best setting "
             "minus the candidate's at its own best, per seed (positive: the "
             "candidate tuned is better than the baseline tuned). Picking each best on "
             "the same seeds it is scored on flatters both alike."),
            ("table", ["comparison", "effect (nats)", "95% interval", "verdict"], rows_bvb)]


def build_sweep_report(folders: list[Path], out: Path | None = None) -> Path:
    return write_grid_report(folders, out, "sweep", fig_sensitivity, sweep_blocks,
                             "AdamHD lab sweep")


def write_grid_report(folders: list[Path], out: Path | None, name: str, figure, blocks_of,
                      title: str) -> Path:
    """Load the runs of a grid (one folder or shards), draw ``figure`` to ``name.png`` and write
    ``name.md`` and ``name.html`` from ``blocks_of``; shared by the sweep and the leaderboard."""

    folders = [Path(f) for f in folders]
    out = Path(out) if out else folders[0]
    meta, rows, missing = load_sweep(folders)
    if not rows:
        raise LabFileError(f"{folders[0]}: no finished run of the {name} yet")
    out.mkdir(parents=True, exist_ok=True)
    figure(meta, rows, out / f"{name}.png")
    blocks = blocks_of(meta, rows, missing, out / f"{name}.png")
    (out / f"{name}.md").write_text(render_md(blocks))
    (out / f"{name}.html").write_text(render_html(blocks, title))
    return out / f"{name}.md"
