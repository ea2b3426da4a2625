"""``adamhd bench``: measurements that back the README's speed and memory figures.

* ``adamhd bench step``: one AdamHD step per path and option against torch's AdamW.
* ``adamhd bench decay``: each optimizer with decoupled decay against itself without it.
* ``adamhd bench rules``: Stable Weight Decay, CPR and the update bound on top of Adam.
* ``adamhd bench transforms``: each gradient transform (and Lookahead) on top of AdamHD.
* ``adamhd bench memory``: optimizer-state bytes per parameter and step time of every optimizer.
* ``adamhd bench precision``: Adafactor's ``1/sqrt(V)`` error in float32 against float64.
* ``adamhd bench lowbit``: error of AdamHD's bf16 and 8-bit moments on a lab model's statistics.
* ``adamhd bench loads``: what the state checks of ``load_state_dict`` cost.

``add_parser(subparsers)`` registers the ``bench`` command with the ``adamhd`` CLI.
"""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "standalone"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from adamhd.bench import loads, lowbit, memory, precision, rules, step, transforms, wrappers

    bench = subparsers.add_parser("bench", help="benchmarks (adamhd bench step|decay|...)")
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    step.add_step_parser(sub)
    wrappers.add_decay_parser(sub)
    rules.add_rules_parser(sub)
    transforms.add_transforms_parser(sub)
    for name, module, help_text in (
        ("memory", memory, "optimizer-state bytes per parameter and step time"),
        ("precision", precision, "Adafactor's factored 1/sqrt(V) against float64"),
        ("lowbit", lowbit, "error of AdamHD's bf16 / 8-bit moments on real gradient statistics"),
        ("loads", loads, "what the state checks of load_state_dict cost"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(func=module.command)


def standalone(name: str, description: str, add_arguments, command,
               argv: list[str] | None = None) -> int:
    """``python -m adamhd.bench.<module>``: parse ``argv`` with the options of ``adamhd bench
    <name>`` and run its command."""
    parser = argparse.ArgumentParser(prog=f"adamhd bench {name}", description=description)
    add_arguments(parser)
    return command(parser.parse_args(argv))
