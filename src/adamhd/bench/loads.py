"""What the state checks of ``load_state_dict`` cost (``docs/checkpoints.md``).

For each optimizer, on ``n`` parameters (``--layouts repeated``: ``n/2`` matrices of one shape
and ``n/2`` vectors, as repeated layers; ``distinct``: ``n`` matrices of ``n`` shapes, so no two
share a derived spec), one step, then ``load_state_dict`` of its own state_dict timed with the
check and without it (``check_state_dict`` of ``adamhd.optim._base`` and of the wrapper replaced
by a no-op), interleaved in an order alternated every round; and the first step after a load
(which checks the state strictly once) against the step after it. Medians over rounds, with the
range; ratios of medians. Run ``adamhd bench loads --help``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

import adamhd
import adamhd.decay.wrapper as wrapper
import adamhd.optim._base as base
from adamhd.argtypes import positive_int

__all__ = ["OPTIMIZERS", "Row", "main", "run"]

OPTIMIZERS: dict[str, Callable[..., Any]] = {
    "nsgda": adamhd.NSGDA, "sm3": adamhd.SM3, "smmf": adamhd.SMMF,
    "adafactor": adamhd.Adafactor, "nadamhd": adamhd.NAdamHD,
}


@dataclass
class Row:
    optimizer: str
    checked_ms: list[float]
    unchecked_ms: list[float]
    first_step_ms: list[float]
    next_step_ms: list[float]

    def line(self) -> str:
        def cell(ms: list[float]) -> str:
            return f"{statistics.median(ms):.2f} [{min(ms):.2f}-{max(ms):.2f}]"

        load = statistics.median(self.checked_ms) / statistics.median(self.unchecked_ms)
        first = statistics.median(self.first_step_ms) / statistics.median(self.next_step_ms)
        return (f"| {self.optimizer} | {cell(self.checked_ms)} | {cell(self.unchecked_ms)} | "
                f"{load:.2f} | {first:.2f} |")


@contextmanager
def _unchecked(on: bool):
    saved = base.check_state_dict, wrapper.check_state_dict
    if not on:
        base.check_state_dict = wrapper.check_state_dict = lambda *args: None  # type: ignore
    try:
        yield
    finally:
        base.check_state_dict, wrapper.check_state_dict = saved


def _params(n: int, layouts: str) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    if layouts == "distinct":
        shapes = [(32, 8 + i) for i in range(n)]
    else:
        shapes = [(64, 64), (64,)] * (n // 2)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def _timed(fn: Callable[..., Any], *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - start) * 1e3


def run(names: list[str], n: int = 200, layouts: str = "repeated", rounds: int = 9) -> list[Row]:
    rows = []
    for name in names:
        params = _params(n, layouts)
        opt = OPTIMIZERS[name](params)
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
        saved = copy.deepcopy(opt.state_dict())
        row = Row(name, [], [], [], [])
        for r in range(rounds):
            for on in ((True, False) if r % 2 else (False, True)):
                with _unchecked(on):
                    ms = _timed(opt.load_state_dict, saved)
                (row.checked_ms if on else row.unchecked_ms).append(ms)
            opt.load_state_dict(saved)
            row.first_step_ms.append(_timed(opt.step))
            row.next_step_ms.append(_timed(opt.step))
        rows.append(row)
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS),
                        help="comma-separated (default: all)")
    parser.add_argument("--params", type=positive_int, default=200)
    parser.add_argument("--layouts", choices=("repeated", "distinct"), default="repeated")
    parser.add_argument("--rounds", type=positive_int, default=9)
    parser.add_argument("--threads", type=positive_int, default=1)


def command(args: argparse.Namespace) -> int:
    names = args.optimizers.split(",")
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown:
        raise ValueError(f"--optimizers: unknown {', '.join(unknown)} "
                         f"(known: {', '.join(OPTIMIZERS)})")
    torch.set_num_threads(args.threads)
    print("| optimizer | checked load ms | unchecked load ms | load ratio | first step ratio |")
    print("|---|---|---|---|---|")
    for row in run(names, args.params, args.layouts, args.rounds):
        print(row.line())
    return 0


def main(argv: list[str] | None = None) -> int:
    from adamhd.bench import standalone

    return standalone("loads", __doc__.splitlines()[0], add_arguments, command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
