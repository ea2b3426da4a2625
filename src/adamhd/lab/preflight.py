"""Checks made before a command touches its output folder: every option, the data, and every
entrant's optimizer, so a bad setting fails at once and leaves earlier results intact."""

from __future__ import annotations

from adamhd.lab.data import Corpus, check_context
from adamhd.lab.model import GPT, MAX_CONTEXT, make_config
from adamhd.lab.optimizers import OptimizerSpec
from adamhd.lab.train import RunConfig, check_dtype, resolve_device


def check_config(cfg: RunConfig) -> None:
    """Device, dtype and context length: what RunConfig alone cannot check."""
    check_dtype(cfg.dtype, resolve_device(cfg.device))
    limit = MAX_CONTEXT[cfg.model]
    if cfg.context > limit:
        raise ValueError(
            f"--context {cfg.context} is longer than model {cfg.model!r} takes (at most "
            f"{limit}): attention cost grows with the square of the context, so every "
            "evaluation would take minutes; use a smaller --context or a larger --model")


def check_entrants(specs: list[OptimizerSpec], cfg: RunConfig, vocab_size: int) -> None:
    """Build every entrant's optimizer on a small stand-in model: options a constructor rejects
    (a bad value, a wrong type) fail here, before any run starts."""
    model = GPT(make_config("tiny", vocab_size, context=8))
    for spec in specs:
        try:
            spec.build(model, cfg.lr, cfg.weight_decay)
        except (ValueError, TypeError, RuntimeError, KeyError) as exc:
            raise ValueError(f"--optimizers {spec.label}: {exc}") from None


def check_run_inputs(cfg: RunConfig, specs: list[OptimizerSpec], corpus: Corpus) -> None:
    check_config(cfg)
    check_context(corpus, cfg.context)
    check_entrants(specs, cfg, corpus.vocab_size)
