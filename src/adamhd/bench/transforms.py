"""``adamhd bench transforms``: the cost of gradient transforms and Lookahead on an AdamHD step.

Method: one AdamHD optimizer over a real model's parameter shapes (GPT-2 124M, or layers of a
1B model; the same sets as ``adamhd bench step``). Each round times, in a rotated order, one
plain ``step()`` and one ``step()`` with each transform attached (``adamhd.transforms.attach``),
restoring the same gradients before every step (untimed; the transforms rewrite them). The
figure is the median over rounds and the ratio to the plain step's median. Lookahead: its sync
(every ``k`` steps) is timed on its own, and its amortised ratio is
``(plain + sync/k) / plain``. Memory: the transforms keep no state; Lookahead keeps one copy of
the weights (4 bytes per fp32 parameter).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from adamhd.argtypes import nonneg_int, positive_int
from adamhd.bench.step import gpt2_124m_shapes, layer_stack_1b_shapes
from adamhd.optim import AdamHD
from adamhd.optim.lookahead import Lookahead
from adamhd.transforms import TRANSFORMS, attach

PATHS = {
    "default": {},
    "single": dict(foreach=False, fused=False),
    "foreach": dict(foreach=True, fused=False),
    "fused": dict(fused=True),
}


@dataclass
class BenchConfig:
    sets: tuple[str, ...] = ("gpt2-124m",)
    layers: int = 1
    rounds: int = 7
    path: str = "default"
    lookahead_k: int = 5
    threads: int = 0
    shapes: list[tuple[int, ...]] | None = None  # overrides ``sets`` (tests use tiny ones)


@dataclass
class Row:
    name: str
    times_ms: list[float] = field(default_factory=list)
    median_ms: float = float("nan")
    min_ms: float = float("nan")
    ratio: float = float("nan")
    state_bytes_per_param: float = 0.0


def _shapes(name: str, config: BenchConfig) -> list[tuple[int, ...]]:
    if name == "gpt2-124m":
        return gpt2_124m_shapes()
    if name == "1b-stack":
        return layer_stack_1b_shapes(config.layers)
    raise ValueError(f"unknown parameter set {name!r} (gpt2-124m or 1b-stack)")


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def run_set(set_name: str, shapes: list[tuple[int, ...]], config: BenchConfig,
            log: Callable[[str], None] = print) -> dict:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in shapes]
    grads = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
    numel = sum(p.numel() for p in params)
    log(f"[{set_name}] {len(params)} tensors, {numel / 1e6:.1f}M parameters, path {config.path}")

    def restore_grads() -> None:
        for p, g in zip(params, grads):
            p.grad = g.clone() if p.grad is None else p.grad.copy_(g)

    opt = AdamHD(params, lr=1e-4, weight_decay=0.1, **PATHS[config.path])
    restore_grads()
    opt.step()  # state, kernels
    rows = {name: Row(name) for name in ["AdamHD", *TRANSFORMS]}
    lookahead = Lookahead(opt, k=config.lookahead_k)
    lookahead._ensure_slow()  # created by its first step, which the bench does not take
    sync = Row(f"Lookahead sync (every {config.lookahead_k} steps)")
    contenders = list(rows)
    for r in range(config.rounds):
        for name in contenders[r % len(contenders):] + contenders[: r % len(contenders)]:
            restore_grads()
            handle = attach(opt, name) if name in TRANSFORMS else None
            rows[name].times_ms.append(_timed(opt.step))
            if handle is not None:
                handle.remove()
        sync.times_ms.append(_timed(lambda: lookahead._sync(opt.param_groups[0]["params"])))
        log(f"  round {r + 1}/{config.rounds}")
    plain = statistics.median(rows["AdamHD"].times_ms)
    for row in [*rows.values(), sync]:
        row.median_ms = statistics.median(row.times_ms)
        row.min_ms = min(row.times_ms)
        row.ratio = row.median_ms / plain
    k = config.lookahead_k
    amortised = Row(f"Lookahead(AdamHD, k={k})", median_ms=plain + sync.median_ms / k,
                    min_ms=rows["AdamHD"].min_ms + sync.min_ms / k, state_bytes_per_param=4.0)
    amortised.ratio = amortised.median_ms / plain
    table = [*rows.values(), sync, amortised]
    return {"param_set": set_name, "parameters": numel, "rows": [asdict(r) for r in table]}


def format_table(result: dict) -> str:
    lines = [
        f"### {result['param_set']} ({result['parameters'] / 1e6:.1f}M parameters)",
        "",
        "| step | median ms | min ms | ratio to AdamHD (medians) | extra state bytes/param |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['name']} | {row['median_ms']:.2f} | {row['min_ms']:.2f} | "
                     f"{row['ratio']:.3f} | "
                     f"{row['state_bytes_per_param']:g} |")
    return "\n".join(lines)


def run(config: BenchConfig, log: Callable[[str], None] = print) -> list[dict]:
    if config.path not in PATHS:
        raise ValueError(f"unknown path {config.path!r} (one of {', '.join(PATHS)})")
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.shapes is not None:
        return [run_set("custom", config.shapes, config, log)]
    return [run_set(name, _shapes(name, config), config, log) for name in config.sets]


def add_transforms_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transforms", help="cost of gradient transforms and Lookahead per step",
                       description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--sets", default="gpt2-124m", help="gpt2-124m and/or 1b-stack, comma-separated")
    p.add_argument("--layers", type=positive_int, default=1, help="layers of the 1B stack")
    p.add_argument("--rounds", type=positive_int, default=7, help="timed steps per contender")
    p.add_argument("--path", default="default", choices=list(PATHS), help="AdamHD path")
    p.add_argument("--threads", type=nonneg_int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--out", default="runs/bench", help="output folder (default %(default)s)")
    p.set_defaults(func=cmd_transforms)


def cmd_transforms(args: argparse.Namespace) -> int:
    config = BenchConfig(sets=tuple(s for s in args.sets.split(",") if s), layers=args.layers,
                         rounds=args.rounds, path=args.path, threads=args.threads)
    results = run(config)
    tables = "\n\n".join(format_table(r) for r in results)
    print(tables)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"command": "adamhd bench transforms", "torch": torch.__version__,
              "threads": torch.get_num_threads(), "config": asdict(config), "results": results}
    (out / "transforms.json").write_text(json.dumps(report, indent=1))
    (out / "transforms.md").write_text(tables + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m adamhd.bench.transforms [options]`` (options as ``adamhd bench transforms``)."""
    parser = argparse.ArgumentParser(prog="adamhd bench")
    add_transforms_parser(parser.add_subparsers(dest="bench_command", required=True))
    args = parser.parse_args(["transforms", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
