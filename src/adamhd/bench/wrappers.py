"""``adamhd bench decay``: what decoupled decay costs on top of each optimizer's own step.

For each base optimizer, three contenders on their own copies of one small parameter set (2-D
matrices, so Muon can take them; fixed gradients):

* ``base``: the optimizer alone, ``weight_decay=0``;
* ``huber``: ``with_decoupled_decay(base)`` with its defaults (adaptive Huber, explicit form);
* ``cautious``: the same with ``cautious_decay=True`` (it keeps a copy of ``p_t`` for the mask).

Where the base is ``torch.optim.Adam``/``AdamW`` with ``fused=True`` (``adam-fused``), ``huber``
and ``cautious`` take the fused chain (``adamhd.decay.fused_chain``: the whole step in one call of
AdamHD's kernel). With ``--ops`` four more: the same two rules with the chain off (the base step,
then the fused decay pass ``adamhd::decay_``: ``-pass``) and on torch's ops (``-ops``): each
earlier stage side by side in one run. ``--set gpt-like`` takes
``adamhd bench step``'s GPT-like parameter set (146 tensors, 42.5M parameters) instead of the
matrices.

Contenders are interleaved: each round times one step of each, in an order rotated every round,
after ``warmup`` untimed steps. The ratio is the median over rounds of ``contender / base`` (the
two steps of a round run back to back, so a machine that slows down for a while, as a shared one
does, affects both): 1.10 means the decay adds 10% to the base step. ``--clock cpu`` times each
step by the CPU time of the calling thread (``time.thread_time``; with ``--threads 1`` torch
computes there): on a shared machine it leaves out the time spent waiting for a core.

Run ``python -m adamhd.bench.wrappers --help``, or ``run(...)`` from Python; ``main(argv)``
prints the table.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from adamhd.argtypes import nonneg_int, positive_int
from adamhd.decay.wrapper import with_decoupled_decay

__all__ = ["BASES", "Row", "add_decay_parser", "main", "run"]


def _external(module: str, attr: str, **kwargs) -> Callable[[], tuple[type, dict]] | None:
    if importlib.util.find_spec(module) is None:
        return None
    return lambda: (getattr(importlib.import_module(module), attr), kwargs)


def _torch(name: str, **kwargs) -> Callable[[], tuple[type, dict]]:
    return lambda: (getattr(torch.optim, name), kwargs)


#: name -> (base class, its constructor arguments), created on use.
BASES: dict[str, Callable[[], tuple[type, dict]] | None] = {
    "sgd": _torch("SGD", lr=1e-2, momentum=0.9),
    "adam": _torch("Adam", lr=1e-3),
    "adam-fused": _torch("Adam", lr=1e-3, fused=True),
    "nadam": _torch("NAdam", lr=1e-3),
    "radam": _torch("RAdam", lr=1e-3),
    "rmsprop": _torch("RMSprop", lr=1e-3),
    "adagrad": _torch("Adagrad", lr=1e-2),
    "adafactor": _torch("Adafactor", lr=1e-2),
    "muon": _torch("Muon", lr=1e-2),
    "lion": _external("pytorch_optimizer", "Lion", lr=1e-4),
}


@dataclass
class Row:
    optimizer: str
    base_ms: float
    huber_ratio: float
    cautious_ratio: float
    huber_pass_ratio: float | None = None
    cautious_pass_ratio: float | None = None
    huber_ops_ratio: float | None = None
    cautious_ops_ratio: float | None = None


def _make(base: type, kwargs: dict, shapes, variant: str) -> tuple[torch.optim.Optimizer, list]:
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-2
    if variant == "base":
        if "weight_decay" in inspect.signature(base.__init__).parameters:
            kwargs = {**kwargs, "weight_decay": 0.0}
        return base(params, **kwargs), params
    wrapped = with_decoupled_decay(base)
    opt = wrapped(params, cautious_decay=variant.startswith("cautious"), **kwargs)
    opt._fused_decay_pass = not variant.endswith("-ops")
    opt._fused_chain = not variant.endswith(("-ops", "-pass"))
    return opt, params


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def time_base(name: str, shapes: list[tuple[int, ...]], rounds: int, warmup: int,
              clock: str = "wall", ops: bool = False) -> Row:
    """Median step times of ``base``, ``huber`` and ``cautious`` (and with ``ops`` the two with
    the fused chain off and on torch's ops) for one base optimizer."""
    now = CLOCKS[clock]
    factory = BASES[name]
    if factory is None:
        raise ValueError(f"{name}: its package is not installed")
    base, kwargs = factory()
    variants = ["base", "huber", "cautious"]
    if ops:
        variants += ["huber-pass", "cautious-pass", "huber-ops", "cautious-ops"]
    opts = {v: _make(base, kwargs, shapes, v)[0] for v in variants}
    for _ in range(warmup):
        for opt in opts.values():
            opt.step()
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            start = now()
            opts[v].step()
            times[v].append(now() - start)
    base_times = times["base"]

    def ratio(v: str) -> float:  # paired: each round's step over the base step of that round
        return statistics.median(t / b for t, b in zip(times[v], base_times))

    row = Row(name, 1e3 * statistics.median(base_times), ratio("huber"), ratio("cautious"))
    if ops:
        row.huber_pass_ratio, row.cautious_pass_ratio = ratio("huber-pass"), ratio("cautious-pass")
        row.huber_ops_ratio, row.cautious_ops_ratio = ratio("huber-ops"), ratio("cautious-ops")
    return row


def run(
    names: list[str] | None = None,
    shapes: list[tuple[int, int]] | None = None,
    rounds: int = 15,
    warmup: int = 3,
    clock: str = "wall",
    ops: bool = False,
) -> list[Row]:
    """Time every base of ``names`` (default: all installed in ``BASES``) on ``shapes``
    (default four 512x512 and one 1024x512 matrix, 1.6M parameters)."""
    shapes = shapes or [(512, 512)] * 4 + [(1024, 512)]
    names = names or [n for n, f in BASES.items() if f is not None]
    return [time_base(n, shapes, rounds, warmup, clock, ops) for n in names]


def format_table(rows: list[Row]) -> str:
    ops = any(r.huber_ops_ratio is not None for r in rows)
    extra = (" + Huber, pass | + cautious, pass | + Huber, torch ops | + cautious, torch ops |"
             if ops else "")
    lines = [
        "| optimizer | base step (ms) | + Huber decay | + cautious Huber decay |" + extra,
        "|---|---:|---:|---:|" + ("---:|---:|---:|---:|" if ops else ""),
    ]
    for r in rows:
        line = (f"| {r.optimizer} | {r.base_ms:.2f} | {r.huber_ratio:.2f}x | "
                f"{r.cautious_ratio:.2f}x |")
        if ops:
            line += (f" {r.huber_pass_ratio:.2f}x | {r.cautious_pass_ratio:.2f}x |"
                     f" {r.huber_ops_ratio:.2f}x | {r.cautious_ops_ratio:.2f}x |")
        lines.append(line)
    return "\n".join(lines)


def _shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        rows, _, cols = item.partition("x")
        out.append((int(rows), int(cols)))
    return out


def add_decay_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``decay`` under ``adamhd bench``."""
    p = sub.add_parser("decay", help="time each optimizer with decoupled decay against itself",
                       description=(__doc__ or "").split("\n\n")[0])
    _add_arguments(p)
    p.set_defaults(func=_cmd)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--optimizers", default=None,
                   help=f"comma-separated, from {', '.join(BASES)} (default: all installed)")
    p.add_argument("--shapes", type=_shapes, default=None,
                   help="comma-separated matrices like 512x512,1024x512 (default: 4x 512x512 and "
                        "1024x512)")
    p.add_argument("--rounds", type=positive_int, default=15,
                   help="timed rounds (default %(default)s)")
    p.add_argument("--warmup", type=nonneg_int, default=3,
                   help="untimed rounds (default %(default)s)")
    p.add_argument("--threads", type=nonneg_int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall time, or the calling thread's CPU time (default %(default)s)")
    p.add_argument("--set", choices=("matrices", "gpt-like"), default="matrices",
                   help="parameter set: --shapes' matrices, or bench step's GPT-like set")
    p.add_argument("--ops", action="store_true",
                   help="also time the rules with the fused chain off (base step + decay pass) "
                        "and on torch's ops (the pass off too)")


def _cmd(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.optimizers.split(",") if args.optimizers else None
    unknown = [n for n in names or [] if n not in BASES]
    if unknown:
        raise SystemExit(f"unknown optimizers: {', '.join(unknown)} (known: {', '.join(BASES)})")
    shapes = args.shapes
    if args.set == "gpt-like":
        from adamhd.bench.step import gpt_like_shapes

        shapes = gpt_like_shapes()
    rows = run(names, shapes, args.rounds, args.warmup, args.clock, args.ops)
    print(format_table(rows))
    print(f"\nmedian of {args.rounds} interleaved rounds, {torch.get_num_threads()} threads, "
          f"{args.clock} clock, torch {torch.__version__}; ratio = step with decay / step without")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``adamhd bench decay`` as a function: parse ``argv``, time, print the table."""
    from adamhd.bench import standalone

    return standalone("decay", __doc__, _add_arguments, _cmd, argv)


if __name__ == "__main__":
    raise SystemExit(main())

