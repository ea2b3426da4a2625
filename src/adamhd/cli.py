"""The `adamhd` command: argument parsing only; the work is done in `adamhd.lab`.

    adamhd compare [options]     train every entrant on every seed, then write the report
    adamhd report DIR            rebuild the report of a comparison from its saved runs
    adamhd sweep [options]       a grid over lr, weight_decay, delta_scale, delta_beta, decay_form
"""

from __future__ import annotations

import argparse
import importlib
import sys

# The defaults of `adamhd compare`: sized so that the whole comparison (2 entrants x 3 seeds)
# fits in 10 minutes on a 2-core CPU; the README gives the measured time.
DEFAULTS = dict(
    optimizers="adamw,adamhd",
    seeds=3,
    steps=200,
    model="tiny",
    batch_size=32,
    context=128,
    lr=3e-3,
    weight_decay=0.1,
    out="runs/compare",
)


def _number(convert, what: str, ok, rule: str):
    """An argparse ``type`` that converts with ``convert`` and checks ``ok`` (``rule`` in words)."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value

    return parse


_positive_int = _number(int, "a whole number", lambda v: v >= 1, ">= 1")
_positive_float = _number(float, "a number", lambda v: v > 0, "> 0")
_nonneg_float = _number(float, "a number", lambda v: v >= 0, ">= 0")


def _list_of(kind):
    def parse(text: str) -> list:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        return [kind(t) for t in items]

    return parse


def _add_run_options(p: argparse.ArgumentParser, *, sweep: bool = False) -> None:
    from adamhd.lab.model import MODEL_SIZES
    from adamhd.lab.train import DTYPES

    g = p.add_argument_group("training")
    g.add_argument("--seeds", type=_positive_int, default=1 if sweep else DEFAULTS["seeds"],
                   help="number of seeds (0..N-1) per entrant (default: %(default)s)")
    g.add_argument("--steps", type=_positive_int, default=DEFAULTS["steps"],
                   help="optimizer steps per run (default: %(default)s)")
    g.add_argument("--model", choices=list(MODEL_SIZES), default=DEFAULTS["model"],
                   help="model size (default: %(default)s; gpt2-124m is for GPUs)")
    g.add_argument("--batch-size", type=_positive_int, default=DEFAULTS["batch_size"],
                   help="sequences per step (default: %(default)s)")
    g.add_argument("--context", type=_positive_int, default=DEFAULTS["context"],
                   help="tokens per sequence (default: %(default)s)")
    if not sweep:
        g.add_argument("--lr", type=_positive_float, default=DEFAULTS["lr"],
                       help="peak learning rate, the same for every entrant (default: %(default)s)")
        g.add_argument("--weight-decay", type=_nonneg_float, default=DEFAULTS["weight_decay"],
                       help="decay coefficient, the same for every entrant (default: %(default)s)")
    g.add_argument("--warmup", type=int, default=None,
                   help="warmup steps (default: 10%% of --steps)")
    g.add_argument("--eval-every", type=_positive_int, default=None,
                   help="steps between validation evaluations (default: --steps / 10)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    if not sweep:
        g.add_argument("--fsdp", action="store_true",
                       help="under torchrun: shard with FSDP2 (fully_shard) instead of DDP")
    g.add_argument("--dtype", choices=list(DTYPES), default="float32",
                   help="autocast dtype (default: %(default)s; float16 needs CUDA)")
    g.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads for torch (default: all cores)")
    d = p.add_argument_group("data")
    d.add_argument("--data", default="shakespeare",
                   help="'shakespeare' (default), a .txt file or folder of .txt files, or "
                        "hf:NAME[:CONFIG] (needs the `datasets` package)")
    if not sweep:
        d.add_argument("--eval-data", default="britannica",
                       help="comma-separated second-domain texts for claim c, each like --data "
                            "(default: britannica, shipped with the shakespeare package; "
                            "'none' for none)")
    d.add_argument("--tokenizer", choices=["byte", "bpe"], default="byte",
                   help="byte-level (default) or a BPE trained locally on the training text")
    d.add_argument("--bpe-vocab", type=_positive_int, default=2048,
                   help="vocabulary size of the BPE tokenizer (default: %(default)s)")
    d.add_argument("--cache-dir", default="runs/.cache",
                   help="where tokenised data is cached (default: %(default)s)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default="runs/sweep" if sweep else DEFAULTS["out"],
                   help="output folder (default: %(default)s)")
    o.add_argument("--resume", action="store_true",
                   help="continue the runs in --out from their checkpoints")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")


def _base_config(args, lr: float, weight_decay: float):
    from adamhd.lab.train import RunConfig

    eval_every = args.eval_every or max(1, args.steps // 10)
    return RunConfig(steps=args.steps, model=args.model, batch_size=args.batch_size,
                     context=args.context, lr=lr, weight_decay=weight_decay,
                     warmup=args.warmup, eval_every=eval_every,
                     ckpt_every=max(eval_every, args.steps // 4), device=args.device,
                     dtype=args.dtype, compile=args.compile)


def _resolve_device(args):
    from adamhd.lab.train import resolve_device

    args.device = resolve_device(args.device).type  # saved as the device actually used


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
    report = run_compare(
        optimizers=args.optimizers, seeds=args.seeds,
        base=_base_config(args, args.lr, args.weight_decay), out=args.out, data=args.data,
        eval_data=eval_data, tokenizer=args.tokenizer, bpe_vocab=args.bpe_vocab,
        cache_dir=args.cache_dir, resume=args.resume, progress=not args.no_progress,
        threads=args.threads, argv=args.argv, fsdp=args.fsdp)
    if not dist.is_main():
        return 0
    print(f"report: {report} (and {report.with_suffix('.html')})")
    verdicts = report.parent / "verdicts.txt"
    if verdicts.exists():
        print(verdicts.read_text(), end="")
    return 0


def cmd_report(args) -> int:
    from adamhd.lab.report import build_report

    report = build_report(args.dir)
    print(f"report: {report} (and {report.with_suffix('.html')})")
    return 0


def cmd_sweep(args) -> int:
    from adamhd.lab.sweep import run_sweep

    _resolve_device(args)
    grid = {"delta_scale": args.delta_scale, "delta_beta": args.delta_beta,
            "decay_form": args.decay_form}
    table = run_sweep(
        optimizers=args.optimizers, lrs=args.lr, weight_decays=args.weight_decay, grid=grid,
        seeds=args.seeds, base=_base_config(args, args.lr[0], args.weight_decay[0]),
        out=args.out, data=args.data, tokenizer=args.tokenizer, bpe_vocab=args.bpe_vocab,
        cache_dir=args.cache_dir, resume=args.resume, progress=not args.no_progress,
        threads=args.threads)
    print(table.read_text(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adamhd", description="Test AdamHD's claims against AdamW on your own machine.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("compare", help="pre-train a small GPT with each optimizer and report",
                       description="Pre-train a GPT-2-style model with each entrant on each "
                                   "seed, then write report.md / report.html in --out.")
    p.add_argument("--optimizers", default=DEFAULTS["optimizers"],
                   help="comma-separated entrants, the first is the baseline; overrides as "
                        "name:key=value,key=value, e.g. adamw,adamhd:delta_scale=2.0 "
                        "(default: %(default)s)")
    _add_run_options(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="rebuild the report of a comparison folder")
    p.add_argument("dir", help="the --out folder of `adamhd compare`")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("sweep", help="grid over lr, weight_decay and AdamHD's options",
                       description="Train every point of the grid (for each entrant, the keys "
                                   "it accepts) and rank them by validation loss.")
    p.add_argument("--optimizers", default="adamhd", help="entrants (default: %(default)s)")
    p.add_argument("--lr", type=_list_of(float), default=[DEFAULTS["lr"]],
                   help="comma-separated learning rates")
    p.add_argument("--weight-decay", type=_list_of(float), default=[DEFAULTS["weight_decay"]],
                   help="comma-separated weight decays")
    p.add_argument("--delta-scale", type=_list_of(float), default=None,
                   help="comma-separated AdamHD delta_scale values")
    p.add_argument("--delta-beta", type=_list_of(float), default=None,
                   help="comma-separated AdamHD delta_beta values")
    p.add_argument("--decay-form", type=_list_of(str), default=None,
                   help="comma-separated AdamHD decay forms (explicit, proximal)")
    _add_run_options(p, sweep=True)
    p.set_defaults(func=cmd_sweep)

    # ------------------------------------------------------------------------------------------
    # Extension point: `adamhd bench ...` lives in the module `adamhd.bench` (owned elsewhere).
    # If that module exists and defines add_parser(subparsers), it registers its own
    # subcommand(s) here, setting `func` on its parser(s) as the commands above do.
    try:
        bench = importlib.import_module("adamhd.bench")
    except ModuleNotFoundError as exc:
        if exc.name not in ("adamhd.bench",):
            raise
    else:
        if hasattr(bench, "add_parser"):
            bench.add_parser(sub)
    # ------------------------------------------------------------------------------------------
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    from adamhd.lab.data import DataError
    from adamhd.lab.report import ReportError
    from adamhd.lab.train import CheckpointError

    try:
        return args.func(args)
    except (DataError, CheckpointError, ReportError, ValueError, FloatingPointError) as exc:
        parser.exit(2, f"adamhd {args.command}: error: {exc}\n")
    except KeyboardInterrupt:
        parser.exit(130, "\ninterrupted; continue later with the same command and --resume\n")


if __name__ == "__main__":
    sys.exit(main())
