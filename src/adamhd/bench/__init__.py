"""``adamhd bench``: speed of one optimizer step (``adamhd bench step``).

``add_parser(subparsers)`` registers the ``bench`` command with the ``adamhd`` CLI.
"""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from adamhd.bench import step

    bench = subparsers.add_parser("bench", help="benchmarks (adamhd bench step)")
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    step.add_step_parser(sub)
