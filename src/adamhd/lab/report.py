"""The report: report.md and a self-contained report.html (PNGs embedded), built from saved runs.

`build_report(out_dir)` reads compare.json and runs/<entrant>/seed<k>/{results.json,
metrics.jsonl}; it trains nothing, so `adamhd report DIR` can rebuild it at any time.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from adamhd.lab.claims import Run, best_vs_best_claim, measure_claims
from adamhd.lab.files import read_json, read_jsonl
from adamhd.lab.regime import Regime
from adamhd.lab.render import render_html, render_md
from adamhd.lab.stats import summarize
from adamhd.lab.train import config_from_dict

COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]


class ReportError(RuntimeError):
    pass


META_KEYS = ("optimizers", "slugs", "seeds", "base_config", "corpus", "machine")
RESULT_KEYS = ("final_val_loss", "final_val_ppl", "domains", "pruning", "histogram", "weights",
               "seconds_per_step", "params", "prunable_params", "tokens", "device", "torch")


# ----------------------------------------------------------------------------------------------
# Loading


def load_runs(out: Path) -> tuple[dict, dict[str, list[Run]]]:
    meta_path = out / "compare.json"
    if not meta_path.is_file():
        raise ReportError(f"{out} holds no compare.json: not the --out folder of a comparison")
    meta = read_json(meta_path, META_KEYS)
    runs: dict[str, list[Run]] = {}
    for label in meta["optimizers"]:
        if label not in meta["slugs"]:
            raise ReportError(f"{meta_path}: 'slugs' has no entry for entrant {label!r}")
        slug = meta["slugs"][label]
        for seed in meta["seeds"]:
            d = out / "runs" / slug / f"seed{seed}"
            res = d / "results.json"
            if not res.is_file():
                continue  # unfinished: reported as missing below
            metrics = read_jsonl(d / "metrics.jsonl", ("kind", "step"))
            runs.setdefault(label, []).append(Run(label, seed, read_json(res, RESULT_KEYS),
                                                  metrics))
    if not runs:
        raise ReportError(f"{out}: no finished run yet (no results.json under {out}/runs)")
    return meta, runs


# ----------------------------------------------------------------------------------------------
# Figures


def _color(labels: list[str], label: str) -> str:
    return COLORS[labels.index(label) % len(COLORS)]


def _band(ax, x, ys, color, label):
    ys = np.asarray(ys, dtype=float)
    ax.plot(x, ys.mean(0), color=color, lw=1.8, label=label)
    if len(ys) > 1:
        ax.fill_between(x, ys.min(0), ys.max(0), color=color, alpha=0.22, lw=0)


def _curves(runs: list[Run], key: str):
    """Common x (steps) and one val-loss row per seed."""
    xs = [np.array([e[key] for e in r.evals], dtype=float) for r in runs]
    ys = [np.array([e["val_loss"] for e in r.evals]) for r in runs]
    return xs, ys


def fig_loss(meta, runs, path: Path) -> None:
    """Validation loss vs step and vs training time, and each candidate's paired difference
    from the baseline (the first entrant)."""
    labels = [lab for lab in meta["optimizers"] if lab in runs]
    fig = Figure(figsize=(15, 4.6), layout="constrained")
    ax_step, ax_time, ax_diff = fig.subplots(1, 3)
    _loss_curves(ax_step, ax_time, meta["corpus"], runs, labels)
    _paired_differences(ax_diff, runs, labels)
    fig.savefig(path, dpi=110)


def _loss_curves(ax_step, ax_time, corpus: dict, runs, labels: list[str]) -> None:
    top = corpus["unigram_val_xent_nats"] + 0.4
    final_min = min(min(e["val_loss"] for e in r.evals) for rs in runs.values() for r in rs)
    for label in labels:
        rs, c = runs[label], _color(labels, label)
        xs, ys = _curves(rs, "step")
        _band(ax_step, xs[0], ys, c, f"{label} (n={len(rs)})")
        # vs time: each seed has its own clock, so each seed is drawn as its own thin line
        for t, y in zip(*_curves(rs, "time"), strict=True):
            ax_time.plot(t, y, color=c, lw=1.0, alpha=0.8)
    for ax in (ax_step, ax_time):
        ax.axhline(corpus["unigram_entropy_nats"], color="gray", ls="--", lw=1)
        ax.text(0.98, corpus["unigram_entropy_nats"], "unigram entropy", color="gray",
                ha="right", va="bottom", transform=ax.get_yaxis_transform(), fontsize=8,
                clip_on=True)
        ax.set_ylim(min(final_min, corpus["unigram_entropy_nats"]) - 0.1, top)
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(alpha=0.3)
    ax_step.set_xlabel("step")
    ax_time.set_xlabel("training time (s, evaluation excluded)")
    ax_step.set_title("validation loss vs step\n(line: mean, band: min-max over seeds)")
    ax_time.set_title("validation loss vs training time\n(one line per seed)")
    per_step = [r.results["seconds_per_step"] for rs in runs.values() for r in rs]
    spread = max(per_step) / min(per_step)
    if spread > 1.3:
        ax_time.text(0.98, 0.6, f"time per step varied {spread:.1f}x across runs:\nthe machine "
                     "was busy; compare by step", transform=ax_time.transAxes, ha="right",
                     fontsize=8, color="darkred")
    ax_step.legend(loc="upper right")


def _paired_differences(ax_diff, runs, labels: list[str]) -> None:
    """Each candidate minus the baseline, paired by seed, at each evaluation step."""
    base = labels[0]
    for label in labels[1:]:
        c = _color(labels, label)
        by_seed = {r.seed: r for r in runs[label]}
        pairs = [(b, by_seed[b.seed]) for b in runs[base] if b.seed in by_seed]
        if not pairs:
            continue
        steps = np.array([e["step"] for e in pairs[0][0].evals], dtype=float)
        d = np.array([[ec["val_loss"] - eb["val_loss"] for eb, ec in
                       zip(b.evals, cand.evals, strict=True)] for b, cand in pairs])
        ax_diff.plot(steps, d.mean(0), color=c, lw=1.8, label=f"{label} - {base}")
        if len(d) > 1:
            stats = [summarize(col) for col in d.T]
            ax_diff.fill_between(steps, [s.low for s in stats], [s.high for s in stats],
                                 color=c, alpha=0.22, lw=0, label="95% interval (paired)")
    ax_diff.axhline(0, color="black", lw=0.8)
    ax_diff.set_xlabel("step")
    ax_diff.set_ylabel("difference in validation loss (nats/token)")
    ax_diff.set_title(f"paired difference from {base}\n(below 0: candidate better)")
    ax_diff.grid(alpha=0.3)
    if len(labels) > 1:  # the axis limits from the last candidate drawn
        ax_diff.legend(loc="best")
        ax_diff.set_xlim(steps[1] if len(steps) > 2 else steps[0], steps[-1])
        lim = np.nanmax(np.abs(d[:, 1:])) if d.shape[1] > 1 else 1.0
        ax_diff.set_ylim(-1.3 * lim, 1.3 * lim)


def fig_pruning(meta, runs, path: Path) -> None:
    labels = [lab for lab in meta["optimizers"] if lab in runs]
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, mode, title in zip(axes, ("global", "layer"),
                               ("global magnitude pruning", "per-layer magnitude pruning"),
                               strict=True):
        for label in labels:
            c = _color(labels, label)
            curves = [r.results["pruning"][mode] for r in runs[label]]
            grid = np.array(sorted(set.intersection(*[set(cv["sparsity"]) for cv in curves])))
            rises = []
            for cv in curves:
                lookup = dict(zip(cv["sparsity"], cv["loss"], strict=True))
                rises.append([100 * (lookup[s] - lookup[0.0]) / lookup[0.0] for s in grid])
            _band(ax, 100 * grid, rises, c, label)
            for cv in curves:
                ax.axvline(100 * cv["max_sparsity"], color=c, lw=0.8, ls=":")
        ax.axhline(1.0, color="gray", ls="--", lw=1)
        ax.text(0.99, 1.0, "+1% loss", color="gray", ha="right", va="bottom", fontsize=8,
                transform=ax.get_yaxis_transform(), clip_on=True)
        ax.set_yscale("symlog", linthresh=1.0, linscale=1.0)
        lo, hi = ax.get_ylim()
        ticks = [t for t in (-100, -50, -20, -10, -5, -2, -1, 0, 1, 2, 5, 10, 20, 50, 100, 200,
                             500, 1000) if lo <= t <= hi or t in (0, 1)]
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_ylim(lo, max(hi, 2.0))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("sparsity (% of block weight matrices zeroed)")
        ax.set_title(f"{title}\n(dotted: largest sparsity within +1%, one line per seed)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("validation loss rise (%, symlog scale)")
    axes[0].legend(loc="upper left")
    fig.savefig(path, dpi=110)


def fig_histograms(meta, runs, path: Path) -> None:
    labels = [lab for lab in meta["optimizers"] if lab in runs]
    fig = Figure(figsize=(5.2 * len(labels), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(labels), sharey=True, sharex=True))
    summed = {}
    for label in labels:
        counts = np.sum([r.results["histogram"]["counts"] for r in runs[label]], axis=0)
        summed[label] = counts / counts.sum()
    edges = np.array(runs[labels[0]][0].results["histogram"]["edges"])
    for ax, label in zip(axes, labels, strict=True):
        c = _color(labels, label)
        ax.stairs(100 * summed[label], edges, fill=True, color=c, alpha=0.6, label=label)
        for other in labels:
            if other != label:
                ax.stairs(100 * summed[other], edges, color=_color(labels, other), lw=1,
                          label=f"{other} (outline)")
        small = np.mean([r.results["weights"]["all"]["frac_below_0.01"] for r in runs[label]])
        ax.set_title(f"{label}: {100 * small:.1f}% of |w| < 1e-2")
        ax.set_xlabel("log10 |w|  (block weight matrices, end of training)")
        ax.axvline(-2, color="gray", lw=0.8, ls="--")
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"% of weights (summed over {len(runs[labels[0]])} seed(s))")
    fig.savefig(path, dpi=110)


def fig_small_weights(meta, runs, path: Path) -> None:
    labels = [lab for lab in meta["optimizers"] if lab in runs]
    fig = Figure(figsize=(12, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, stat, title in zip(axes, ("frac_below_0.01", "mean_abs"),
                               ("fraction of |w| < 1e-2", "mean |w|"), strict=True):
        for label in labels:
            rs = runs[label]
            steps = [e["step"] for e in rs[0].evals]
            ys = [[e["weights"]["all"][stat] for e in r.evals] for r in rs]
            _band(ax, steps, ys, _color(labels, label), label)
        ax.set_title(f"{title} over training (block weight matrices)")
        ax.set_xlabel("step")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.savefig(path, dpi=110)


def extra_blocks(cfg: dict, labels: list[str], runs) -> list:
    """The survey's questions: training without warm-up, and long-tailed gradients."""
    blocks = []
    if cfg.get("warmup") == 0:
        blocks.append(("p", "**Without warm-up** (`--warmup 0`, the full lr from step 1): a run "
                       "whose loss becomes non-finite stops the comparison with an error naming "
                       "the entrant and step, so every entrant with results above trained "
                       "without warm-up at this lr: " + ", ".join(labels) + ". An unfinished "
                       "entrant either diverged or was not reached."))
    if has_tails(runs):
        blocks.append(("p", "**Gradient tails** (figure `gradient_tails.png`): per block weight "
                       "matrix, at each evaluation step, the excess kurtosis of its gradient "
                       "(0 for a Gaussian) and the ratio of the 99.9th to the 50th percentile "
                       "of |g|; larger means heavier tails (`adamhd.lab.tails`)."))
    return blocks


TAIL_STATS = (("kurtosis", "excess kurtosis of g"), ("p999_p50", "|g| 99.9th / 50th percentile"))


def has_tails(runs) -> bool:
    return any(r["kind"] == "tails" for rs in runs.values() for run in rs for r in run.metrics)


def fig_tails(meta, runs, path: Path) -> None:
    """Gradient-tail statistics over training (`adamhd.lab.tails`): one line per block weight
    matrix (mean over seeds), one column per entrant, one row per statistic."""
    labels = [lab for lab in meta["optimizers"] if lab in runs]
    fig = Figure(figsize=(4.6 * len(labels), 7), layout="constrained")
    axes = np.array(fig.subplots(2, len(labels), sharey="row", squeeze=False))
    for col, label in enumerate(labels):
        seeds = [[r for r in run.metrics if r["kind"] == "tails"] for run in runs[label]]
        seeds = [rows for rows in seeds if rows]
        for row, (stat, title) in enumerate(TAIL_STATS):
            ax = axes[row, col]
            for layer in sorted(seeds[0][0]["layers"]) if seeds else []:
                steps = [r["step"] for r in seeds[0]]
                ys = np.nanmean([[np.nan if r["layers"][layer][stat] is None
                                  else r["layers"][layer][stat] for r in rows]
                                 for rows in seeds], axis=0)
                ax.plot(steps, ys, lw=0.9, alpha=0.7, label=layer.removesuffix(".weight"))
            ax.set_yscale("log" if stat == "p999_p50" else "symlog")
            ax.set_title(f"{label}: {title}", fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=6, ncol=2)
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------------------------------------
# The report


def _fmt_summary(values, digits=3, scale=1.0, unit=""):
    return summarize(values).fmt(digits, scale, unit)


def _task_cell(results: list[dict]) -> str:
    tasks = [r.get("choice") for r in results]
    if not all(t and t.get("items") for t in tasks):
        return "not measured"
    return (_fmt_summary([t["accuracy"] for t in tasks], 1, 100, "%")
            + f" ({tasks[0]['items']} items, chance {100 / tasks[0]['choices']:.0f}%)")


def timing_blocks(labels: list[str], runs: dict) -> list:
    """Where each run's time went: training, periodic evaluation (a fixed subset), the final
    evaluation on the full sets, the task, the pruning curves (each timed separately)."""
    keys = [("periodic_eval_seconds", "periodic evaluation (fixed subset)"),
            ("final_eval_seconds", "final evaluation (full sets)"),
            ("choice_seconds", "continuation task"), ("prune_seconds", "pruning curves")]
    rows = []
    for label in labels:
        rs = [r.results for r in runs[label]]
        cells = [f"{summarize(r['train_seconds'] for r in rs).mean:.1f}"]
        for key, _ in keys:
            vals = [r.get("timing", {}).get(key) for r in rs]
            cells.append("n/a" if None in vals else f"{summarize(vals).mean:.1f}")
        rows.append([label, *cells])
    return [("h", 2, "Where the time went (seconds per run, mean over seeds)"),
            ("table", ["entrant", "training", *[name for _, name in keys]], rows),
            ("p", "Periodic evaluations use a fixed, seeded subset of validation windows (the "
             "same for every run); the final losses use the full validation and second-domain "
             "sets; each evaluation of a pruned model uses the fixed subset.")]


def matching_sweep(out: Path, meta: dict, sweep_dirs: list[Path] | None = None):
    """(sweep meta, rows) of a sweep for the same corpus and training budget as this comparison:
    <out>/sweep (the default compare's weight-decay grid) or `sweep_dirs`; None if none."""
    from adamhd.lab.sweep_report import load_sweep

    dirs = sweep_dirs or ([out / "sweep"] if (out / "sweep" / "sweep.json").is_file() else [])
    if not dirs:
        return None
    smeta, rows, _ = load_sweep(dirs)
    keys = ("model", "steps", "batch_size", "context", "warmup", "min_lr_ratio", "grad_clip",
            "dropout", "dtype")
    a, b = smeta["base_config"], meta["base_config"]
    differ = [k for k in keys if a.get(k) != b.get(k)]
    if smeta["corpus"]["key"] != meta["corpus"]["key"]:
        differ.append("corpus")
    if meta["optimizers"][0] not in smeta["entrants"]:
        differ.append(f"baseline {meta['optimizers'][0]!r} not in the sweep")
    if differ and sweep_dirs:
        raise ReportError(f"the sweep in {dirs[0]} does not match this comparison "
                          f"({', '.join(differ)} differ): no best vs best from it")
    return None if differ else (smeta, rows)


def build_report(out: str | Path, sweep_dirs: list[Path] | None = None) -> Path:
    out = Path(out)
    meta, runs = load_runs(out)
    labels = [lab for lab in meta["optimizers"] if lab in runs]
    cfg = meta["base_config"]
    figs = write_figures(meta, runs, out)
    blocks = intro_blocks(meta, runs, labels)
    blocks += setup_blocks(meta, labels, runs[labels[0]][0].results)
    blocks.append(("h", 2, "Regime"))
    blocks.append(("p", Regime.of(config_from_dict(cfg)).words()))
    blocks += results_blocks(meta["corpus"], labels, runs)
    sweep_text, sweep = sweep_note(out, meta, sweep_dirs)
    blocks += sweep_text
    claim_text, verdict_lines = claims_blocks(labels, runs, sweep)
    blocks += claim_text
    blocks += timing_blocks(labels, runs)
    blocks.append(("p", "Scale: these are small models trained briefly; the paper's claims are "
                   "about GPT-2/GPT-3 pre-training. 'Inconclusive at this scale' means this run "
                   "cannot tell, not that the claim is false; 'not supported' means this run "
                   "measured the opposite, or an effect too small to match the claim."))
    blocks += extra_blocks(cfg, labels, runs)
    blocks.append(("h", 2, "Figures"))
    for name, alt in figs.items():
        blocks.append(("img", out / name, alt))

    md = render_md(blocks)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(render_html(blocks, "AdamHD lab report"))
    (out / "verdicts.txt").write_text("\n".join(verdict_lines) + "\n")
    return out / "report.md"


def write_figures(meta: dict, runs: dict[str, list[Run]], out: Path) -> dict[str, str]:
    """Draw the report's figures into `out`; returns {file name: alt text}."""
    figs = {
        "val_loss.png": ("validation loss", fig_loss),
        "pruning.png": ("pruning curves", fig_pruning),
        "weight_histograms.png": ("weight-magnitude histograms", fig_histograms),
        "small_weights.png": ("weight statistics over training", fig_small_weights),
    }
    if has_tails(runs):
        figs["gradient_tails.png"] = ("gradient-tail statistics per layer over training",
                                      fig_tails)
    for name, (_, fn) in figs.items():
        fn(meta, runs, out / name)
    return {name: alt for name, (alt, _) in figs.items()}


def intro_blocks(meta: dict, runs: dict[str, list[Run]], labels: list[str]) -> list:
    missing = [f"{lab} seed {s}" for lab in meta["optimizers"] for s in meta["seeds"]
               if s not in {r.seed for r in runs.get(lab, [])}]
    blocks = [("h", 1, "AdamHD vs AdamW: the lab's report")]
    blocks.append(("p", "What was measured on this machine, with these settings. Intervals are "
                   "95% Student-t intervals over seeds (paired by seed where a difference is "
                   "shown); with one seed no interval can be computed and none is shown."))
    if missing:
        blocks.append(("p", "**Unfinished runs, left out:** " + ", ".join(missing)))
    return blocks


def setup_blocks(meta: dict, labels: list[str], any_run: dict) -> list:
    """The setup (command, corpus, model, training, machine) and the reference losses."""
    corpus, cfg = meta["corpus"], meta["base_config"]
    warmup = cfg["warmup"] if cfg["warmup"] is not None else max(1, cfg["steps"] // 10)
    setup = [
        f"command: `adamhd {' '.join(meta.get('argv') or ['compare'])}`",
        f"corpus: {corpus['name']}, {corpus['tokenizer']} tokenizer (vocabulary "
        f"{corpus['vocab_size']}); {corpus['train_tokens']:,} training tokens from "
        f"{corpus['train_works']} works; validation {corpus['val_tokens']:,} tokens; split "
        f"{corpus['split']}: {', '.join(corpus['val_works'])}",
        "second domain (never trained on): " + (", ".join(
            f"{k} ({v:,} tokens)" for k, v in corpus["eval_sets"].items()) or "none"),
        f"model: GPT-2-style decoder `{cfg['model']}`, {any_run['params']:,} parameters "
        f"({any_run['prunable_params']:,} in prunable weight matrices), context {cfg['context']}",
        f"training: {cfg['steps']} steps x batch {cfg['batch_size']} x context {cfg['context']}"
        f" = {any_run['tokens']:,} tokens; lr {cfg['lr']:g} with linear warmup "
        f"({warmup} steps) and cosine decay to {cfg['min_lr_ratio']:g} x lr; weight_decay "
        f"{cfg['weight_decay']:g} (biases and norms exempt); gradient clipping at "
        f"{cfg['grad_clip']:g}; dtype {cfg['dtype']}",
        f"entrants: {', '.join(labels)}; seeds: {len(meta['seeds'])}",
        f"machine: {meta['machine']['processor']}, {meta.get('threads', '?')} threads, "
        f"{any_run['device']}, torch {any_run['torch']}"
        + (f"; comparison wall time {meta['train_wall_seconds'] / 60:.1f} min"
           if "train_wall_seconds" in meta else ""),
    ]
    reference = [
        f"initial loss of an untrained model: ln({corpus['vocab_size']}) = "
        f"{math.log(corpus['vocab_size']):.3f} nats/token",
        f"unigram entropy of the training text: {corpus['unigram_entropy_nats']:.3f} nats/token;"
        f" a unigram model's loss on the validation works: {corpus['unigram_val_xent_nats']:.3f}"
        " (a model below this has learned to use context)",
    ]
    return [("h", 2, "Setup"), ("ul", setup), ("h", 2, "Reference points"), ("ul", reference)]


def results_blocks(corpus: dict, labels: list[str], runs: dict[str, list[Run]]) -> list:
    """The table of results per entrant (mean and interval over seeds)."""
    domain_names = sorted(corpus["eval_sets"])
    header = ["entrant", "final val loss", "val perplexity",
              *[f"loss on {d}" for d in domain_names], "continuation task accuracy",
              "train s/step",
              "max sparsity <= +1% (global)", "(per layer)", "memory saved (global)"]
    rows = []
    for label in labels:
        rs = [r.results for r in runs[label]]
        rows.append([
            f"{label} (n={len(rs)})",
            _fmt_summary([r["final_val_loss"] for r in rs]),
            _fmt_summary([r["final_val_ppl"] for r in rs], 3),
            *[_fmt_summary([r["domains"][d]["loss"] for r in rs]) for d in domain_names],
            _task_cell(rs),
            _fmt_summary([r["seconds_per_step"] for r in rs], 3),
            _fmt_summary([r["pruning"]["global"]["max_sparsity"] for r in rs], 1, 100, "%"),
            _fmt_summary([r["pruning"]["layer"]["max_sparsity"] for r in rs], 1, 100, "%"),
            _fmt_summary([r["pruning"]["global"]["bytes"]["net_frac_of_model"] for r in rs], 1,
                         100, "%"),
        ])
    return [("h", 2, "Results per entrant"), ("table", header, rows),
            ("p", "Memory saved: of the whole model's fp32 bytes, if the pruned matrices "
             "are stored as their kept values plus a 1-bit mask (an upper bound that "
             "ignores the mask would be the sparsity times the matrices' share).")]


def sweep_note(out: Path, meta: dict, sweep_dirs: list[Path] | None) -> tuple[list, tuple | None]:
    """The matching weight-decay sweep, if any (its report is rebuilt when it is the comparison's
    own), and the paragraph that points to it."""
    sweep = matching_sweep(out, meta, sweep_dirs)
    if sweep is None:
        return [], None
    where = "sweep/sweep.md" if sweep_dirs is None else \
        ", ".join(f"{d}/sweep.md" for d in sweep_dirs)
    if sweep_dirs is None:
        from adamhd.lab.sweep_report import build_sweep_report

        build_sweep_report([out / "sweep"])
    return [("p", "A weight-decay grid for the same corpus and training budget was "
             f"run (see `{where}`), so the claims table ends with **best vs best**: "
             "each entrant at its own best weight_decay of that grid.")], sweep


def claims_blocks(labels: list[str], runs: dict[str, list[Run]],
                  sweep: tuple | None) -> tuple[list, list[str]]:
    """Each candidate's claims against the baseline (the first entrant): the tables, and one
    verdict line per claim."""
    baseline = labels[0]
    blocks, verdict_lines = [], []
    for cand in labels[1:]:
        claims = measure_claims(runs[baseline], runs[cand])
        if sweep is not None and cand in sweep[0]["entrants"]:
            claims.append(best_vs_best_claim(sweep[0], sweep[1], baseline, cand))
        blocks.append(("h", 2, f"The paper's claims: {cand} vs {baseline}"))
        blocks.append(("table", ["claim", "paper says", "measured here", "effect",
                                 "95% interval", "verdict"],
                       [[c.key, c.paper, c.measure, c.effect_text(), c.interval_text(),
                         f"**{c.verdict}** ({c.reason})"] for c in claims]))
        notes = [f"{c.key}: {n}" for c in claims for n in c.notes]
        if notes:
            blocks.append(("ul", notes))
        verdict_lines += [f"{cand} vs {baseline}, claim {c.key}: {c.verdict}: {c.reason} "
                          f"(effect {c.effect_text()}, interval {c.interval_text()})"
                          for c in claims]
    return blocks, verdict_lines
