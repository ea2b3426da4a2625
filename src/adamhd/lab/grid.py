"""What a grid point of the lab (a sweep or leaderboard cell) is: its run configuration and the
key of its corpus. Shared by ``compare`` and ``sweep``.
"""

from __future__ import annotations

from dataclasses import replace

from adamhd.lab.train import RunConfig


def corpus_key(corpus) -> str:
    return corpus.key + "".join(f"+{name}" for name in corpus.eval_sets)


def grid_config(base: RunConfig) -> RunConfig:
    """A grid point's run: the final validation loss only (no pruning, task, second domain)."""
    return replace(base, prune=False, choice_items=0, domains=False)
