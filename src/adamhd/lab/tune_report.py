"""`adamhd tune-report`: the results of an `adamhd tune` storage, at any point of the study.

Writes into one folder: `results.md` (settings, budget, CPU time, one ranked table per scale,
the verdicts against tuned AdamW), `results.json` (the raw numbers: every trial and re-run),
`speedup.png` (speedup over tuned AdamW against model size, one line per entrant) and
`curves_SCALE.png` (validation loss of the re-runs at each entrant's best setting). A (scale,
entrant) cell whose trials or re-runs are not all done is marked incomplete and not ranked.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import numpy as np

from adamhd.lab.claims import crossing
from adamhd.lab.stats import Summary, paired, seeds_needed, summarize

BASELINE = "adamw"


# ----------------------------------------------------------------------------------------------
# Reading the storage


def read_study(url: str, prefix: str) -> dict:
    """Study `prefix` as plain data: {"settings", "cells": {scale: {entrant: cell}}}."""
    import optuna

    from adamhd.lab.tune import CONFIG_STUDY, SETTINGS_KEY, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url)
    names = optuna.get_all_study_names(storage)
    config = f"{prefix}/{CONFIG_STUDY}"
    if config not in names:
        raise ValueError(f"{url} holds no study {prefix!r} (studies: "
                         f"{sorted({n.split('/')[0] for n in names}) or 'none'})")
    settings = optuna.load_study(study_name=config, storage=storage).user_attrs[SETTINGS_KEY]
    cells: dict[str, dict[str, dict]] = {}
    for name in sorted(names):
        parts = name.split("/")
        if len(parts) != 3 or parts[0] != prefix:
            continue
        study = optuna.load_study(study_name=name, storage=storage)
        cells.setdefault(parts[1], {})[parts[2]] = _cell(study, settings)
    return {"settings": settings, "cells": cells}


def _cell(study, settings: dict) -> dict:
    from adamhd.lab.tune import counted

    trials = []
    for t in counted(study)[: settings["trials"]]:
        trials.append({"number": t.number, "state": t.state.name, "params": t.params,
                       "value": t.value, **{k: t.user_attrs.get(k) for k in (
                           "seed", "diverged", "pruned_at", "cpu_seconds", "wall_seconds",
                           "ms_per_step", "params")}})
        trials[-1]["model_params"] = trials[-1].pop("params")
        trials[-1]["params"] = t.params
    attrs = study.user_attrs
    finals = sorted((v for k, v in attrs.items() if k.startswith("final:")),
                    key=lambda v: v["seed"])
    best = attrs.get("best")
    if best is not None:
        finals = [f for f in finals if f["setting"] == best["params"]]
    return {"space": attrs.get("space"), "trials": trials, "best": best, "finals": finals,
            "error": attrs.get("error")}


# ----------------------------------------------------------------------------------------------
# The numbers of one cell


def complete(cell: dict, settings: dict) -> bool:
    done = [t for t in cell["trials"] if t["state"] in ("COMPLETE", "PRUNED")]
    seeds = sorted(f["seed"] for f in cell["finals"])
    return len(done) == settings["trials"] and seeds == sorted(settings["fresh_seeds"])


def _final_losses(cell: dict) -> dict[int, float]:
    return {f["seed"]: f["final_val_loss"] for f in cell["finals"]
            if f["final_val_loss"] is not None}


def speedups(base: dict, cell: dict) -> list[float]:
    """Per fresh seed: AdamW's steps to its own final (periodic) loss over the entrant's steps to
    it, interpolated between evaluations; nan where the entrant never reached it."""
    out = []
    by_seed = {f["seed"]: f for f in cell["finals"]}
    for b in base["finals"]:
        c = by_seed.get(b["seed"])
        if c is None:
            continue
        evals_b = [{"step": s, "val_loss": v} for s, v in b["curve"]]
        evals_c = [{"step": s, "val_loss": v} for s, v in c["curve"]]
        target = evals_b[-1]["val_loss"]
        t_b, t_c = crossing(evals_b, target, "step"), crossing(evals_c, target, "step")
        out.append(math.nan if t_c is None or t_c == 0 else t_b / t_c)
    return out


def row(entrant: str, cell: dict, base: dict | None, settings: dict) -> dict:
    """The scored numbers of one cell (re-runs on fresh seeds only)."""
    losses = _final_losses(cell)
    trials = cell["trials"]
    r = {
        "entrant": entrant, "complete": complete(cell, settings),
        "trials_done": sum(t["state"] in ("COMPLETE", "PRUNED") for t in trials),
        "pruned": sum(t["state"] == "PRUNED" and not t["diverged"] for t in trials),
        "diverged": sum(bool(t["diverged"]) for t in trials),
        "best": cell["best"], "seeds": sorted(losses), "error": cell.get("error"),
        "loss": summarize(losses.values()) if losses else None,
        "ms_per_step": float(np.median([f["ms_per_step"] for f in cell["finals"]]))
        if cell["finals"] else None,
        "state_bytes": cell["finals"][0]["state_bytes_per_param"] if cell["finals"] else None,
    }
    if base is not None and entrant != BASELINE:
        base_losses = _final_losses(base)
        common = sorted(set(base_losses) & set(losses))
        if len(common) >= 2:
            r["diff"] = paired([base_losses[k] for k in common], [losses[k] for k in common])
        s = speedups(base, cell)
        reached = [x for x in s if not math.isnan(x)]
        r["speedup"] = summarize(reached) if reached else None
        r["never"] = len(s) - len(reached)
    return r


def verdict_of(r: dict) -> str:
    d = r.get("diff")
    if d is None or not d.has_interval:
        return "n/a"
    if d.low > 0:
        return "better"
    if d.high < 0:
        return "worse"
    n = seeds_needed(d)
    return "undecided" + (f" (~{n} seeds)" if n else " (no effect seen)")


# ----------------------------------------------------------------------------------------------
# Writing


def _fmt(s: Summary | None, digits: int = 4) -> str:
    if s is None:
        return "-"
    return s.fmt(digits) if s.has_interval else f"{s.mean:.{digits}f} (n={s.n})"


def _setting(best: dict | None) -> str:
    if not best:
        return "-"
    return ", ".join(f"{k} {v:.3g}" for k, v in sorted(best["params"].items()))


def scale_table(scale: str, cells: dict, settings: dict) -> tuple[list[str], list[dict]]:
    base = cells.get(BASELINE)
    base = base if base is not None and complete(base, settings) else None
    rows = [row(e, c, base, settings) for e, c in cells.items()]
    ranked = sorted(rows, key=lambda r: (not r["complete"], r["loss"] is None,
                                         r["loss"].mean if r["loss"] else 0))
    head = ["rank", "entrant", "best setting", "final val loss [95%]",
            f"{BASELINE} minus entrant [95%] (+: better)", "verdict",
            f"speedup over {BASELINE} [95%]", "state B/param", "ms/step",
            "trials: done / pruned / diverged", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(ranked, 1):
        sp = r.get("speedup")
        speed = "-" if r["entrant"] == BASELINE or not r["seeds"] or "speedup" not in r else (
            (_fmt(sp, 2) if sp else "never") +
            (f" ({r['never']} seed(s) never)" if r.get("never") and sp else ""))
        status = "complete" if r["complete"] else \
            f"**incomplete** ({r['trials_done']}/{settings['trials']} trials, " \
            f"{len(r['seeds'])}/{len(settings['fresh_seeds'])} re-runs)" + \
            (f", last error: {r['error']}" if r["error"] else "")
        lines.append("| " + " | ".join([
            str(i) if r["complete"] else "-", r["entrant"], _setting(r["best"]), _fmt(r["loss"]),
            _fmt(r.get("diff")), verdict_of(r) if r["entrant"] != BASELINE else "baseline",
            speed, "-" if r["state_bytes"] is None else f"{r['state_bytes']:.1f}",
            "-" if r["ms_per_step"] is None else f"{r['ms_per_step']:.0f}",
            f"{r['trials_done']} / {r['pruned']} / {r['diverged']}", status]) + " |")
    return lines, ranked


def fig_speedup(tables: dict, params: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    entrants = sorted({r["entrant"] for rows in tables.values() for r in rows} - {BASELINE})
    cmap = __import__("matplotlib").colormaps["tab20"]
    scales = sorted(tables, key=lambda s: params.get(s, 0))
    for i, e in enumerate(entrants):
        xs, ys, lo, hi = [], [], [], []
        for s in scales:
            r = next((r for r in tables[s] if r["entrant"] == e and r["complete"]), None)
            sp = r and r.get("speedup")
            if sp:
                xs.append(params[s])
                ys.append(sp.mean)
                lo.append(sp.mean - (sp.low if sp.has_interval else sp.mean))
                hi.append((sp.high if sp.has_interval else sp.mean) - sp.mean)
        if xs:
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, lw=1.2,
                        color=cmap(i % 20), ls="-" if i < 10 else "--", label=e)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("model parameters")
    ax.set_ylabel(f"speedup over tuned {BASELINE} (steps to its final loss)")
    ax.set_title("speedup against model size (mean and 95% interval over fresh seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    fig.savefig(path, dpi=110)


def fig_curves(scale: str, cells: dict, ranked: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    cmap = __import__("matplotlib").colormaps["tab20"]
    finals = []
    for i, r in enumerate(x for x in ranked if cells[x["entrant"]]["finals"]):
        curves = [f["curve"] for f in cells[r["entrant"]]["finals"] if not f["diverged"]]
        if not curves:
            continue
        steps = [s for s, _ in curves[0]]
        mean = np.mean([[v for _, v in c] for c in curves], axis=0)
        finals.append(mean[-1])
        ax.plot(steps, mean, color=cmap(i % 20), lw=1.3, ls="-" if i < 10 else "--",
                label=r["entrant"] + ("" if r["complete"] else " (incomplete)"))
    if finals:
        ax.set_ylim(min(finals) - 0.05, min(finals) + 1.0)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/token, periodic subset, mean over fresh seeds)")
    ax.set_title(f"{scale}: every entrant at its best setting")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=110)


def _cpu_seconds(cells: dict) -> float:
    total = 0.0
    for by_entrant in cells.values():
        for cell in by_entrant.values():
            total += sum(t["cpu_seconds"] or 0.0 for t in cell["trials"])
            total += sum(f["cpu_seconds"] for f in cell["finals"])
    return total


def _jsonable(obj):
    if isinstance(obj, Summary):
        return {"n": obj.n, "mean": obj.mean, "low": obj.low, "high": obj.high, "sd": obj.sd}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_report(url: str, prefix: str, out: Path, command: str | None = None) -> Path:
    data = read_study(url, prefix)
    settings, cells = data["settings"], data["cells"]
    out.mkdir(parents=True, exist_ok=True)
    scales = [s for s in settings["scales"] if s in cells]
    tables, lines, params = {}, [], {}
    for s in scales:
        table, ranked = scale_table(s, cells[s], settings)
        tables[s] = ranked
        params[s] = next((f["params"] for c in cells[s].values() for f in c["finals"]), None) \
            or next((t["model_params"] for c in cells[s].values() for t in c["trials"]
                     if t["model_params"]), 0)
        fig_curves(s, cells[s], ranked, out / f"curves_{s}.png")
        lines += [*_scale_head(s, settings, params[s]), *table, "",
                  *_verdicts(ranked), "", f"![loss curves at {s}](curves_{s}.png)", ""]
    fig_speedup(tables, params, out / "speedup.png")
    head = _head(settings, cells, command)
    text = "\n".join([*head, *lines, "![speedup against model size](speedup.png)", ""])
    (out / "results.md").write_text(text)
    raw = {"settings": settings, "cpu_seconds": _cpu_seconds(cells), "cells": cells,
           "rows": {s: [{k: _jsonable(v) for k, v in r.items()} for r in tables[s]]
                    for s in scales}}
    (out / "results.json").write_text(json.dumps(raw, default=_jsonable, separators=(",", ":")))
    return out / "results.md"


def _head(settings: dict, cells: dict, command: str | None) -> list[str]:
    cpu = _cpu_seconds(cells)
    n_cells = sum(len(v) for v in cells.values())
    n_done = sum(complete(c, settings) for v in cells.values() for c in v.values())
    lines = [
        f"# Tuned against tuned: study `{settings['prefix']}`", "",
        f"{n_done} of {n_cells} (scale, entrant) cells complete"
        + ("" if n_done == n_cells else " (the rest are marked incomplete and not ranked)") + ".",
        "",
        f"- Budget: {settings['trials']} tuning trials per entrant and scale "
        f"({settings['sampler']} sampler, {settings['pruner']} pruner on the periodic "
        f"validation loss), tuning seed(s) {list(settings['tuning_seeds'])}; each best setting "
        f"re-run on the fresh seeds {list(settings['fresh_seeds'])}, and only those re-runs "
        "are scored.",
        f"- Objective of a trial: validation loss at the end on {settings['objective_windows']} "
        f"fixed windows; scored loss: {settings['final_windows']} fixed windows; curves and "
        f"speedups: {settings['eval_windows']} fixed windows every 1/{settings['final_evals']} "
        "of the run.",
        f"- Data: {settings['data']} ({settings['tokenizer']} tokens); device "
        f"{settings['device']}, {settings['dtype']}.",
        f"- CPU time of the trials and re-runs so far: {cpu / 3600:.2f} CPU-hours "
        "(process time of the workers, summed).",
        f"- Machine: {_machine()}.",
        "- Intervals: 95% Student-t over the fresh seeds; differences paired by seed. Verdict "
        "'better' / 'worse': the interval of the paired difference excludes 0; 'undecided': it "
        "contains 0, with the seeds that would detect the measured difference with 80% power.",
        "- Speedup: AdamW's steps to its own final loss over the entrant's steps to that loss "
        "(per seed, interpolated between evaluations), mean over the seeds that reached it; "
        "'never': not reached in the run (a speedup below 1).",
        "- ms/step: median training time per step of the re-runs, one thread, measured while "
        "the machine was shared (under heavy load the figures are inflated and noisy: compare "
        "them only roughly). State bytes: the optimizer's state tensors per model parameter.",
    ]
    if command:
        lines += ["", "Command:", "", "```sh", command, "```"]
    return lines + [""]


def _machine() -> str:
    import os

    import torch

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), model)
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def _scale_head(scale: str, settings: dict, params: int) -> list[str]:
    sc = settings["scales"][scale]
    tokens = sc["steps"] * sc["batch_size"] * sc["context"]
    return [f"## Scale `{scale}`: model `{sc['model']}`, {params:,} parameters", "",
            f"{sc['steps']} steps x batch {sc['batch_size']} x context {sc['context']} = "
            f"{tokens:,} tokens, {tokens / max(1, params):.2f} tokens per parameter.", ""]


def _verdicts(ranked: list[dict]) -> list[str]:
    done = [r for r in ranked if r["complete"] and r["entrant"] != BASELINE]
    groups = {"better": [], "worse": [], "undecided": []}
    for r in done:
        v = verdict_of(r)
        key = v.split(" ")[0]
        if key in groups:
            groups[key].append(r["entrant"] + (v[len(key):] if key == "undecided" else ""))
    return [f"- Better than tuned {BASELINE}: {', '.join(groups['better']) or 'none'}",
            f"- Worse than tuned {BASELINE}: {', '.join(groups['worse']) or 'none'}",
            f"- Undecided (seeds for 80% power): {', '.join(groups['undecided']) or 'none'}"]
