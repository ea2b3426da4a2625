"""The `adamhd tune` and `adamhd tune-report` commands: parsing and checks (the work is in
`tune` and `tune_report`). Imported when the parser is built, so it imports nothing heavy."""

from __future__ import annotations

import argparse
import sys

from adamhd.argtypes import list_of, nonneg_int, positive_int

# `--preset gpu`: the same study at GPT-2-small scale on one CUDA GPU (docs/results/README.md).
# Every value can still be overridden by its option.
PRESETS = {
    "cpu": dict(scales="mini,tiny", device="cpu", dtype="float32", compile=False, study="cpu"),
    "gpu": dict(scales="small,gpt2-124m", device="cuda", dtype="bfloat16", compile=True,
                study="gpu", context=1024, batch_size=16),
}


def add_parsers(sub) -> None:
    """`adamhd tune` and `adamhd tune-report`."""
    p = sub.add_parser(
        "tune", help="tune every entrant with the same budget at several scales",
        description="Optuna studies, one per (scale, entrant): the same number of trials over "
                    "each entrant's declared space on tuning seeds, a pruner on the periodic "
                    "validation loss, then the best setting re-run on fresh seeds (the only "
                    "runs scored). The storage is kept: run the same command again to resume, "
                    "or with more --optimizers to add entrants.")
    _add_study_options(p)
    _add_worker_options(p)
    _add_data_options(p)
    p.set_defaults(func=cmd_tune)
    _add_report_parser(sub)


def _add_study_options(p) -> None:
    """Entrants, scales, budget, seeds, sampler, pruner and the storage of the studies."""
    p.add_argument("--optimizers", default="all",
                   help="comma-separated entrant names (default: all registered)")
    p.add_argument("--preset", choices=list(PRESETS), default="cpu",
                   help="cpu (default: mini and tiny on the CPU) or gpu (small and gpt2-124m, "
                        "sequence 1024, bf16 autocast, torch.compile, CUDA)")
    p.add_argument("--scales", type=list_of(str), default=None,
                   help="model scales (default from the preset: mini,tiny)")
    p.add_argument("--steps", type=list_of(positive_int), default=None,
                   help="steps per run: one value, or one per scale (default: each scale's)")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--context", type=positive_int, default=None)
    p.add_argument("--trials", type=positive_int, default=8,
                   help="tuning trials per entrant and scale (default: %(default)s)")
    p.add_argument("--tuning-seeds", type=list_of(nonneg_int), default=[0],
                   help="seeds of the tuning trials, used in turn (default: 0)")
    p.add_argument("--fresh-seeds", type=list_of(nonneg_int), default=[1, 2, 3],
                   help="seeds of the scored re-runs, disjoint from the tuning seeds, at least 3 "
                        "(default: 1,2,3)")
    p.add_argument("--sampler", choices=["qmc", "tpe"], default="qmc",
                   help="qmc: scrambled Sobol points (default); tpe: Optuna's TPE")
    p.add_argument("--pruner", choices=["asha", "hyperband", "none"], default="asha")
    p.add_argument("--storage", default="runs/tune/study.db",
                   help="an SQLite file, made with its missing folders (default: "
                        "%(default)s), or a database URL, e.g. postgresql://user@host/db")
    p.add_argument("--study", default=None,
                   help="name of the study in the storage (default: the preset's, cpu or gpu)")


def _add_worker_options(p) -> None:
    """How the studies run: worker processes, threads, Ray, shards, heartbeats."""
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="studies run at once, each in its own worker process (default: 1)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads per worker (default: %(default)s)")
    p.add_argument("--ray", action="store_true",
                   help="run the studies as Ray tasks (RAY_ADDRESS, else a local Ray)")
    p.add_argument("--shard", default=None, help="i/N: only every N-th study from the i-th")
    p.add_argument("--heartbeat", type=positive_int, default=60,
                   help="seconds between a running trial's heartbeats; a trial silent for 3 "
                        "of them is taken as killed and run again (default: %(default)s)")


def _add_data_options(p) -> None:
    """The corpus, and the device / dtype / compile overrides of the preset."""
    p.add_argument("--data", default="shakespeare",
                   help="'shakespeare', a UTF-8 text file or folder, or hf:NAME[:CONFIG]")
    p.add_argument("--tokenizer", choices=["byte", "bpe"], default="byte")
    p.add_argument("--bpe-vocab", type=positive_int, default=2048)
    p.add_argument("--cache-dir", default="runs/.cache")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default from the preset)")


def _add_report_parser(sub) -> None:
    r = sub.add_parser("tune-report", help="write the results of an `adamhd tune` storage",
                       description="Tables, plots and raw JSON from the storage of adamhd tune, "
                                   "at any point: unfinished (scale, entrant) cells are marked.")
    r.add_argument("--storage", default="runs/tune/study.db",
                   help="the SQLite file or database URL of `adamhd tune` (default: %(default)s)")
    r.add_argument("--study", default="cpu")
    r.add_argument("--out", default="runs/tune/report", help="folder (default: %(default)s)")
    r.add_argument("--command", default=None, dest="recorded_command",
                   help="the command that made the study, written into the report")
    r.set_defaults(func=cmd_tune_report)


def settings_from_args(args):
    from adamhd.lab.optimizers import REGISTRY
    from adamhd.lab.tune import Settings, make_scales

    preset = PRESETS[args.preset]
    for key in ("device", "dtype", "compile", "study", "context", "batch_size"):
        if getattr(args, key, None) is None:
            setattr(args, key, preset.get(key))
    scales = args.scales or preset["scales"].split(",")
    names = list(REGISTRY) if args.optimizers.strip().lower() == "all" else \
        [n.strip().lower() for n in args.optimizers.split(",") if n.strip()]
    bad = [n for n in names if n not in REGISTRY]
    if bad or not names:
        raise ValueError(f"--optimizers: unknown entrant(s) {bad}; registered: "
                         f"{', '.join(sorted(REGISTRY))}")
    if len(set(names)) != len(names):
        raise ValueError("--optimizers lists an entrant twice")
    return Settings(
        scales=make_scales(scales, args.steps, args.batch_size, args.context),
        trials=args.trials, tuning_seeds=tuple(args.tuning_seeds),
        fresh_seeds=tuple(args.fresh_seeds), sampler=args.sampler, pruner=args.pruner,
        data=args.data, tokenizer=args.tokenizer, bpe_vocab=args.bpe_vocab, device=args.device,
        dtype=args.dtype, compile=bool(args.compile), prefix=args.study, corpus_key=""), names


def preflight(settings, names, corpus) -> None:
    """Device, context and every entrant's optimizer, before the storage is touched."""
    from adamhd.lab.data import check_context
    from adamhd.lab.optimizers import parse_spec
    from adamhd.lab.preflight import check_config, check_entrants
    from adamhd.lab.tune import run_config, space_of

    for scale in settings.scales:
        for name in names:
            mid = {k: (d.low * d.high) ** 0.5 if d.log else (d.low + d.high) / 2
                   for k, d in space_of(name).items()}
            cfg = run_config(settings, scale, name, mid, settings.fresh_seeds[0], settings.evals)
            check_config(cfg)
            check_context(corpus, cfg.context)
            check_entrants([parse_spec(cfg.optimizer)], cfg, corpus.vocab_size)


def cmd_tune(args) -> int:
    from dataclasses import replace

    from adamhd.lab.data import load_corpus
    from adamhd.lab.jobs import parse_shard
    from adamhd.lab.tune import Plan, check_stored_settings, run_plan, storage_url

    settings, names = settings_from_args(args)
    shard = parse_shard(args.shard)
    url = storage_url(args.storage)
    if url.startswith("sqlite:///"):
        from pathlib import Path

        parent = Path(url[len("sqlite:///"):]).parent
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"--storage: {parent} is not a folder")
    if args.ray:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ValueError("--ray needs the `ray` package: pip install 'ray[default]'") from None
    corpus = load_corpus(args.data, tokenizer=args.tokenizer, bpe_vocab=args.bpe_vocab,
                         cache_dir=args.cache_dir)
    settings = replace(settings, corpus_key=corpus.key)
    preflight(settings, names, corpus)
    check_stored_settings(settings, url)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    plan = Plan(settings, url, names, heartbeat=args.heartbeat)
    print(f"adamhd tune: {len(plan.cells)} studies ({len(names)} entrants x "
          f"{len(settings.scales)} scales), {settings.trials} trials each, storage {url}",
          file=sys.stderr, flush=True)
    run_plan(plan, corpus, jobs=args.jobs, threads=args.threads, use_ray=args.ray, shard=shard)
    print(f"done; the report: adamhd tune-report --storage {args.storage} --study "
          f"{settings.prefix} --out DIR", file=sys.stderr)
    return 0


def cmd_tune_report(args) -> int:
    from pathlib import Path

    from adamhd.lab.tune import storage_url
    from adamhd.lab.tune_report import write_report

    url = storage_url(args.storage)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise ValueError(f"--storage: no such study file {url[len('sqlite:///'):]}")
    out = write_report(url, args.study, Path(args.out), command=args.recorded_command)
    print(f"report: {out}")
    return 0
