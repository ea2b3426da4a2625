"""The `adamhd` command: argument parsing only; the work is done in `adamhd.lab`.

    adamhd compare [options]     train every entrant on every seed, then write the report
    adamhd sweep [options]       a grid over weight_decay / decay budget, lr, AdamHD's options
    adamhd leaderboard [options] every registered entrant at its best lr, ranked
    adamhd report DIR [DIR...]   rebuild a report from saved runs (merging sweep shards)
"""

from __future__ import annotations

import argparse
import importlib
import sys

from adamhd.argtypes import (
    list_of,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
)

# The defaults of `adamhd compare`, chosen by measurement (docs/lab.md): AdamW vs AdamHD on 3
# seeds at a decay budget of 1 (the decay term matters), plus a weight-decay grid for "best vs
# best", within 10 minutes on a busy 2-core CPU.
DEFAULTS = dict(
    optimizers="adamw,adamhd",
    seeds=3,
    steps=300,
    model="mini",
    batch_size=16,
    context=128,
    lr=3e-3,
    decay_budget=1.0,
    grid_budgets="0.1,0.3",
    jobs=2,
    out="runs/compare",
)
SWEEP_BUDGETS = (0.1, 0.3, 1.0, 3.0)

def _budgets(text: str) -> list[float]:
    if text.strip().lower() == "none":
        return []
    return list_of(nonneg_float)(text)


def _add_run_options(p: argparse.ArgumentParser, *, kind: str = "compare") -> None:
    """The options every training command takes (compare, sweep, leaderboard): training, data,
    output; `kind` "compare" adds its own (one lr, one weight decay or budget, a grid, FSDP,
    a second domain)."""
    _add_training_options(p.add_argument_group("training"), kind)
    _add_data_options(p.add_argument_group("data"), kind)
    _add_output_options(p.add_argument_group("output"), kind)


def _add_training_options(g, kind: str) -> None:
    from adamhd.lab.model import MODEL_SIZES
    from adamhd.lab.train import DTYPES

    g.add_argument("--seeds", type=positive_int, default=DEFAULTS["seeds"],
                   help="number of seeds (0..N-1) per entrant and setting (default: %(default)s)")
    g.add_argument("--steps", type=positive_int, default=DEFAULTS["steps"],
                   help="optimizer steps per run (default: %(default)s)")
    g.add_argument("--model", choices=list(MODEL_SIZES), default=DEFAULTS["model"],
                   help="model size (default: %(default)s; gpt2-124m is for GPUs)")
    g.add_argument("--batch-size", type=positive_int, default=DEFAULTS["batch_size"],
                   help="sequences per step (default: %(default)s)")
    g.add_argument("--context", type=positive_int, default=DEFAULTS["context"],
                   help="tokens per sequence (default: %(default)s)")
    if kind == "compare":
        _add_compare_decay_options(g)
    g.add_argument("--warmup", type=nonneg_int, default=None,
                   help="warmup steps, at most --steps (default: 10%% of --steps)")
    g.add_argument("--eval-every", type=positive_int, default=None,
                   help="steps between validation evaluations (default: --steps / 10)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    if kind == "compare":
        g.add_argument("--fsdp", action="store_true",
                       help="under torchrun: shard with FSDP2 (fully_shard) instead of DDP")
    g.add_argument("--dtype", choices=list(DTYPES), default="float32",
                   help="autocast dtype (default: %(default)s; float16 needs CUDA)")
    g.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads per run (default: 1 with --jobs > 1, else all cores)")
    g.add_argument("--jobs", type=positive_int, default=DEFAULTS["jobs"],
                   help="runs trained at once, each in its own worker process "
                        "(default: %(default)s)")


def _add_compare_decay_options(g) -> None:
    """compare's one lr, one weight decay (or decay budget) and its grid of budgets."""
    g.add_argument("--lr", type=positive_float, default=DEFAULTS["lr"],
                   help="peak learning rate, the same for every entrant (default: %(default)s)")
    wd = g.add_mutually_exclusive_group()
    wd.add_argument("--weight-decay", type=nonneg_float, default=None,
                    help="decay coefficient, the same for every entrant (default: the one "
                         "giving --decay-budget)")
    wd.add_argument("--decay-budget", type=nonneg_float, default=None,
                    help="ask for a regime: weight_decay is solved so that the sum over the "
                         "run of lr_t x weight_decay is this (default: "
                         f"{DEFAULTS['decay_budget']:g})")
    g.add_argument("--grid-budgets", type=_budgets, default=DEFAULTS["grid_budgets"],
                   help="extra decay budgets, each a weight_decay point trained on the same "
                        "seeds for 'best vs best' ('none': no grid; default: %(default)s)")


def _add_data_options(d, kind: str) -> None:
    d.add_argument("--data", default="shakespeare",
                   help="'shakespeare' (default), a UTF-8 .txt file or folder of .txt files, "
                        "or hf:NAME[:CONFIG] (needs the `datasets` package)")
    if kind == "compare":
        d.add_argument("--eval-data", default="britannica",
                       help="comma-separated second-domain texts for claim c, each like --data "
                            "(default: britannica, shipped with the shakespeare package; "
                            "'none' for none)")
    d.add_argument("--tokenizer", choices=["byte", "bpe"], default="byte",
                   help="byte-level (default) or a BPE trained locally on the training text")
    d.add_argument("--bpe-vocab", type=positive_int, default=2048,
                   help="vocabulary size of the BPE tokenizer (default: %(default)s)")
    d.add_argument("--cache-dir", default="runs/.cache",
                   help="where tokenised data is cached (default: %(default)s)")


def _add_output_options(o, kind: str) -> None:
    o.add_argument("--out", default=f"runs/{kind}" if kind != "compare" else DEFAULTS["out"],
                   help="output folder (default: %(default)s)")
    o.add_argument("--resume", action="store_true",
                   help="continue the runs in --out from their checkpoints")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    o.add_argument("--tensorboard", metavar="DIR", default="",
                   help="also log per-layer histograms of weights, gradients and updates at "
                        "each evaluation step to DIR/<entrant>/seed<N> (needs tensorboard)")


def _base_config(args, lr: float, weight_decay: float):
    from adamhd.lab.train import RunConfig

    eval_every = args.eval_every or max(1, args.steps // 10)
    return RunConfig(steps=args.steps, model=args.model, batch_size=args.batch_size,
                     context=args.context, lr=lr, weight_decay=weight_decay,
                     warmup=args.warmup, eval_every=eval_every,
                     ckpt_every=max(eval_every, args.steps // 4), device=args.device,
                     dtype=args.dtype, compile=args.compile, tensorboard=_board(args))


def _board(args) -> str:
    """--tensorboard's folder, after checking that tensorboard imports (before --out is
    touched)."""
    if args.tensorboard:
        from adamhd.lab.tails import require_tensorboard

        require_tensorboard()
    return args.tensorboard


def _resolve_device(args):
    from adamhd.lab.train import resolve_device

    args.device = resolve_device(args.device).type  # saved as the device actually used


def _compare_weight_decays(args) -> tuple[float, list[float]]:
    """The main weight_decay and the grid's, from --weight-decay / --decay-budget(s)."""
    from adamhd.lab.regime import weight_decay_for

    probe = _base_config(args, args.lr, 0.0)
    if args.weight_decay is not None:
        main = args.weight_decay
    else:
        budget = DEFAULTS["decay_budget"] if args.decay_budget is None else args.decay_budget
        main = weight_decay_for(budget, probe)
    grid = [weight_decay_for(b, probe) for b in args.grid_budgets]
    return main, grid


def cmd_compare(args) -> int:
    from adamhd.lab import dist

    _resolve_device(args)
    if args.fsdp and not dist.launched_by_torchrun():
        raise ValueError("--fsdp shards over several processes: launch under "
                         "torchrun --nproc_per_node N (N > 1)")
    dist.init_from_env(args.device)  # under torchrun: DDP (or --fsdp), global --batch-size
    try:
        return _compare(args)
    finally:
        dist.shutdown()


def _compare(args) -> int:
    from adamhd.lab import dist
    from adamhd.lab.compare import run_compare

    eval_data = [] if args.eval_data.strip().lower() == "none" else \
        [s.strip() for s in args.eval_data.split(",") if s.strip()]
    weight_decay, grid = _compare_weight_decays(args)
    jobs = 1 if dist.world() > 1 else args.jobs
    report = run_compare(
        optimizers=args.optimizers, seeds=args.seeds,
        base=_base_config(args, args.lr, weight_decay), out=args.out, data=args.data,
        eval_data=eval_data, tokenizer=args.tokenizer, bpe_vocab=args.bpe_vocab,
        cache_dir=args.cache_dir, resume=args.resume, progress=not args.no_progress,
        threads=args.threads, argv=args.argv, fsdp=args.fsdp, jobs=jobs, wd_grid=grid)
    if not dist.is_main():
        return 0
    print(f"report: {report} (and {report.with_suffix('.html')})")
    verdicts = report.parent / "verdicts.txt"
    if verdicts.exists():
        print(verdicts.read_text(), end="")
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from adamhd.lab.report import build_report
    from adamhd.lab.sweep import build_any_report

    dirs = [Path(d) for d in args.dir]
    if (dirs[0] / "compare.json").is_file():
        if len(dirs) > 1:
            raise ValueError("a comparison folder is reported alone; several folders are for "
                             "the shards of one sweep")
        report = build_report(dirs[0], [Path(d) for d in args.sweep] if args.sweep else None)
    elif (dirs[0] / "sweep.json").is_file():
        report = build_any_report(dirs, Path(args.out) if args.out else None)
    else:
        raise ValueError(f"{dirs[0]} holds no compare.json or sweep.json: not the --out folder "
                         "of adamhd compare, sweep or leaderboard")
    print(f"report: {report} (and {report.with_suffix('.html')})")
    return 0


def cmd_sweep(args) -> int:
    from adamhd.lab.jobs import parse_shard
    from adamhd.lab.sweep import run_sweep

    shard = parse_shard(args.shard)
    _resolve_device(args)
    grid = {"delta_scale": args.delta_scale, "delta_beta": args.delta_beta,
            "decay_form": args.decay_form}
    budgets = args.decay_budget
    if budgets is None and args.weight_decay is None:
        budgets = list(SWEEP_BUDGETS) if args.command == "sweep" else [DEFAULTS["decay_budget"]]
    report = run_sweep(
        optimizers=args.optimizers, lrs=args.lr, weight_decays=args.weight_decay, grid=grid,
        budgets=budgets, seeds=args.seeds,
        base=_base_config(args, args.lr[0], 0.0), out=args.out, data=args.data,
        tokenizer=args.tokenizer, bpe_vocab=args.bpe_vocab, cache_dir=args.cache_dir,
        resume=args.resume, progress=not args.no_progress, threads=args.threads, shard=shard,
        jobs=args.jobs, use_ray=args.ray, argv=args.argv, kind=args.command)
    if report is None:
        print(f"shard {args.shard} done in {args.out}; when every shard is done: "
              f"adamhd report {args.out} [other shard folders...]")
        return 0
    print(f"report: {report} (and {report.with_suffix('.html')})")
    print(report.read_text(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adamhd", description="Test AdamHD's claims against AdamW on your own machine.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text, description, add_options, defaults in _commands():
        p = sub.add_parser(name, help=help_text, description=description)
        add_options(p)
        p.set_defaults(**defaults)

    from adamhd.lab.tune_cli import add_parsers as add_tune_parsers

    add_tune_parsers(sub)  # `adamhd tune`, `adamhd tune-report`
    _add_bench_parsers(sub)
    return parser


def _commands() -> list[tuple]:
    """The lab's commands: (name, help, description, the options' builder, the defaults)."""
    return [
        ("compare", "pre-train a small GPT with each optimizer and report",
         "Pre-train a GPT-2-style model with each entrant on each seed, then write report.md / "
         "report.html in --out.",
         _compare_options, dict(func=cmd_compare)),
        ("report", "rebuild the report of a compare / sweep folder",
         "Rebuild report.md / report.html (compare) or sweep.md / sweep.html (sweep, merging "
         "the folders of its shards).",
         _report_options, dict(func=cmd_report)),
        ("sweep", "grid over weight_decay (or decay budget), lr, AdamHD options",
         "Train every point of the grid on every seed (for each entrant, the keys it accepts), "
         "then report the sensitivity to weight_decay and best vs best.",
         _sweep_options, dict(func=cmd_sweep)),
        ("leaderboard", "every registered entrant at its best lr, ranked",
         "Train every entrant (default: all registered) at each lr of a small grid on the same "
         "seeds, then rank each at its best lr: final loss, paired difference from adamw, "
         "steps to adamw's final loss, state bytes, step time, sparsity.",
         _leaderboard_options,
         dict(func=cmd_sweep, delta_scale=None, delta_beta=None, decay_form=None, seeds=2)),
    ]


def _compare_options(p) -> None:
    p.add_argument("--optimizers", default=DEFAULTS["optimizers"],
                   help="comma-separated entrants, the first is the baseline; overrides as "
                        "name:key=value,key=value, e.g. adamw,adamhd:delta_scale=2.0; 'all': "
                        "every registered entrant (default: %(default)s)")
    _add_run_options(p, kind="compare")


def _report_options(p) -> None:
    p.add_argument("dir", nargs="+", help="the --out folder(s)")
    p.add_argument("--out", default=None,
                   help="where a merged sweep report goes (default: the first folder)")
    p.add_argument("--sweep", action="append", default=None, metavar="DIR",
                   help="for a comparison: the folder(s) of a sweep with the same corpus and "
                        "training budget, for 'best vs best' (default: DIR/sweep if present)")


def _sweep_options(p) -> None:
    p.add_argument("--optimizers", default="adamw,adamhd", help="entrants (default: %(default)s)")
    p.add_argument("--lr", type=list_of(positive_float), default=[DEFAULTS["lr"]],
                   help="comma-separated learning rates (default: %(default)s)")
    wd = p.add_mutually_exclusive_group()
    wd.add_argument("--weight-decay", type=list_of(nonneg_float), default=None,
                    help="comma-separated weight decays")
    wd.add_argument("--decay-budget", type=list_of(nonneg_float), default=None,
                    help="comma-separated decay budgets, each solved to a weight_decay per lr "
                         f"(default: {','.join(map(str, SWEEP_BUDGETS))})")
    p.add_argument("--delta-scale", type=list_of(positive_float), default=None,
                   help="comma-separated AdamHD delta_scale values")
    p.add_argument("--delta-beta", type=list_of(nonneg_float), default=None,
                   help="comma-separated AdamHD delta_beta values")
    p.add_argument("--decay-form", type=list_of(str), default=None,
                   help="comma-separated AdamHD decay forms (explicit, proximal)")
    p.add_argument("--shard", default=None,
                   help="i/N: train only every N-th point from the i-th (merge the shards' "
                        "folders with adamhd report)")
    p.add_argument("--ray", action="store_true",
                   help="run the points as Ray tasks (ray.init(): a cluster from RAY_ADDRESS, "
                        "else a local one; needs `pip install ray`)")
    _add_run_options(p, kind="sweep")


def _leaderboard_options(p) -> None:
    p.add_argument("--optimizers", default="all",
                   help="entrants, adamw first (default: all registered)")
    p.add_argument("--lr", type=list_of(positive_float), default=[1e-3, 3e-3, 1e-2],
                   help="comma-separated learning rates (default: 1e-3,3e-3,1e-2)")
    wd = p.add_mutually_exclusive_group()
    wd.add_argument("--weight-decay", type=list_of(nonneg_float), default=None,
                    help="weight decay for every entrant and lr")
    wd.add_argument("--decay-budget", type=list_of(nonneg_float), default=None,
                    help="decay budget, solved to a weight_decay per lr (default: 1)")
    p.add_argument("--shard", default=None, help="i/N, as for sweep")
    p.add_argument("--ray", action="store_true", help="as for sweep")
    _add_run_options(p, kind="leaderboard")


def _add_bench_parsers(sub) -> None:
    """Extension point: `adamhd bench ...` lives in the module `adamhd.bench`. If that module
    exists and defines add_parser(subparsers), it registers its own subcommand(s) here, setting
    `func` on its parser(s) as the commands above do."""
    try:
        bench = importlib.import_module("adamhd.bench")
    except ModuleNotFoundError as exc:
        if exc.name not in ("adamhd.bench",):
            raise
    else:
        if hasattr(bench, "add_parser"):
            bench.add_parser(sub)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    from adamhd.lab.files import LockError
    from adamhd.lab.report import ReportError
    from adamhd.lab.train import CheckpointError

    try:
        return args.func(args)
    except (CheckpointError, ReportError, LockError, ValueError, FloatingPointError) as exc:
        parser.exit(2, f"adamhd {args.command}: error: {exc}\n")
    except OSError as exc:  # a path we cannot create, read or write: name it
        where = f"{exc.filename}: " if exc.filename else ""
        parser.exit(2, f"adamhd {args.command}: error: {where}{exc.strerror or exc}\n")
    except KeyboardInterrupt:
        parser.exit(130, "\ninterrupted; continue later with the same command and --resume\n")


if __name__ == "__main__":
    sys.exit(main())
