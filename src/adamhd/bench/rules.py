"""``adamhd bench rules``: step cost and state bytes of the decay rules and the update bound.

Contenders, each on its own copy of one parameter set (2-D matrices, fixed gradients of size
1e-2), all on torch Adam (``foreach`` as torch chooses):

* ``adam``: Adam with ``weight_decay=0`` (the base every ratio is taken against);
* ``l2`` / ``huber``: ``with_decoupled_decay(Adam)`` with ``decay="l2"`` / the default Huber;
* ``stable``: ``decay="l2", decay_scaling="stable"`` (Stable Weight Decay, arXiv 2011.11152);
* ``cpr`` / ``cpr cautious``: ``decay="cpr"`` (arXiv 2311.09058, uniform kappa so it acts);
* ``bound``: Adam with ``attach_update_bound`` on every matrix (arXiv 2505.21910, 2 iterations);
* ``amos``: Amos (arXiv 2210.11693), its own optimizer: its extra state is negative (no
  per-element moments).

Timing as ``adamhd bench decay``: interleaved rounds in a rotating order after untimed warm-up
steps; the ratio is the median over rounds of ``contender / adam`` of the same round. State bytes
per parameter: every tensor of ``optimizer.state`` after the steps (``bench memory``'s count),
minus Adam's own, divided by the parameter count.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch

from adamhd.argtypes import nonneg_int, positive_int
from adamhd.bench.memory import state_bytes
from adamhd.bench.wrappers import CLOCKS, _shapes
from adamhd.decay.wrapper import with_decoupled_decay
from adamhd.optim.amos import Amos
from adamhd.transforms.bound import attach_update_bound

__all__ = ["CONTENDERS", "add_rules_parser", "run"]

Build = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


def _wrapped(**options) -> Build:
    return lambda ps: with_decoupled_decay(torch.optim.Adam)(ps, lr=1e-3, **options)


def _bound(ps: list[torch.Tensor]) -> torch.optim.Optimizer:
    opt = torch.optim.Adam(ps, lr=1e-3)
    attach_update_bound(opt, iters=2)
    return opt


CONTENDERS: dict[str, Build] = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3),
    "l2": _wrapped(weight_decay=0.1, decay="l2"),
    "huber": _wrapped(weight_decay=0.1),
    "stable": _wrapped(weight_decay=1e-4, decay="l2", decay_scaling="stable"),
    "cpr": _wrapped(decay="cpr", cpr_kappa_init="uniform", cpr_kappa_param=0.5),
    "cpr cautious": _wrapped(decay="cpr", cpr_kappa_init="uniform", cpr_kappa_param=0.5,
                             cautious_decay=True),
    "bound": _bound,
    "amos": lambda ps: Amos(ps, lr=1e-2),
}


def _params(shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-2
    return params


def run(shapes: list[tuple[int, int]] | None = None, rounds: int = 15, warmup: int = 3,
        clock: str = "wall") -> list[tuple[str, float, float, float]]:
    """Rows ``(name, step ms, ratio to adam, extra state bytes per parameter)``."""
    shapes = shapes or [(512, 512)] * 4 + [(1024, 512)]
    now = CLOCKS[clock]
    opts = {name: build(_params(shapes)) for name, build in CONTENDERS.items()}
    names = list(opts)
    for _ in range(warmup):
        for opt in opts.values():
            opt.step()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = now()
            opts[name].step()
            times[name].append(now() - start)
    numel = sum(a * b for a, b in shapes)
    base_bytes = state_bytes(opts["adam"])
    return [  # state bytes per parameter beyond Adam's (negative: less than Adam)
        (name, 1e3 * statistics.median(times[name]),
         statistics.median(t / b for t, b in zip(times[name], times["adam"])),
         (state_bytes(opts[name]) - base_bytes) / numel)
        for name in names
    ]


def format_table(rows: list[tuple[str, float, float, float]]) -> str:
    lines = ["| contender | step ms | / Adam step | extra state bytes/param |",
             "|---|---:|---:|---:|"]
    lines += [f"| {n} | {ms:.2f} | {ratio:.2f}x | {extra:.2e} |" for n, ms, ratio, extra in rows]
    return "\n".join(lines)


def add_rules_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``rules`` under ``adamhd bench``."""
    p = sub.add_parser("rules", help="step cost and state of SWD, CPR, Amos and the update bound",
                       description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--shapes", type=_shapes, default=None,
                   help="comma-separated matrices like 512x512 (default: 4x 512x512, 1024x512)")
    p.add_argument("--rounds", type=positive_int, default=15,
                   help="timed rounds (default %(default)s)")
    p.add_argument("--warmup", type=nonneg_int, default=3,
                   help="untimed rounds (default %(default)s)")
    p.add_argument("--threads", type=nonneg_int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    print(format_table(run(args.shapes, args.rounds, args.warmup, args.clock)))
    print(f"\nmedian of {args.rounds} interleaved rounds, {torch.get_num_threads()} threads, "
          f"{args.clock} clock, torch {torch.__version__}")
    return 0
