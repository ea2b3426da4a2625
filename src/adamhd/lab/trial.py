"""One tuning trial or one scored re-run: a short training run kept in memory.

Unlike `train.train_run` it writes no folder and no checkpoint (a trial that is killed is run again
from the start: it is a few seconds to minutes), and it reports the periodic validation loss to a
callback, so that a pruner can stop a hopeless trial. The schedule (`train.lr_at`), the model
(`train.build_model`), the batches (`data.train_batch`) and the evaluation windows are the lab's
own, so a trial trains exactly what `adamhd compare` would with the same settings.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from adamhd.lab import evaluate as ev
from adamhd.lab.data import EVAL_SUBSET_SEED, Corpus, train_batch
from adamhd.lab.optimizers import parse_spec
from adamhd.lab.train import (
    RunConfig,
    build_model,
    resolve_device,
    set_lr,
    state_bytes_per_param,
)

# A run diverged when its training loss stops being finite, or when it ends no better than its
# initialisation (validation loss at the end >= at step 0): the lr was too large to learn anything.


class Diverged(Exception):
    """Raised inside a trial whose loss stopped being finite."""


def run_trial(cfg: RunConfig, corpus: Corpus, *, final_windows: int,
              report: Callable[[int, float], None] | None = None) -> dict:
    """Train `cfg` and return its curve and measurements.

    `report(step, val_loss)` is called after each periodic evaluation (every `cfg.eval_every`
    steps, on the fixed subset of `cfg.eval_windows` validation windows); it may raise to stop the
    trial (a pruner). The final validation loss is measured on `final_windows` windows (0: all).
    """
    device = resolve_device(cfg.device)
    spec = parse_spec(cfg.optimizer)
    model = build_model(cfg, corpus.vocab_size).to(device)
    optimizer = spec.build(model, cfg.lr, cfg.weight_decay)
    torch.manual_seed(cfg.seed + 1_000_003)  # the dropout stream, as train_run seeds it
    if cfg.compile:
        torch._dynamo.reset()  # each trial is a new model: compile afresh, not past the cache limit
    forward = torch.compile(model) if cfg.compile else model
    cpu0, train_seconds = time.process_time(), 0.0

    def val_loss(windows: int) -> float:
        return ev.evaluate_loss(model, corpus.val, context=cfg.context,
                                batch_size=cfg.eval_batch, max_windows=windows, device=device,
                                dtype=cfg.dtype, subset_seed=EVAL_SUBSET_SEED)

    curve = [[0, val_loss(cfg.eval_windows)]]
    model.train()
    diverged = False
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        value = _train_step(cfg, corpus, step, model, forward, optimizer, spec, device)
        train_seconds += time.perf_counter() - t0
        if not math.isfinite(value):
            diverged = True
            break
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            curve.append([done, val_loss(cfg.eval_windows)])
            if report is not None and done < cfg.steps:
                report(done, curve[-1][1])
    final = math.inf if diverged else val_loss(final_windows)
    if not math.isfinite(final) or curve[-1][1] >= curve[0][1]:
        diverged = True
    return {
        "curve": curve,
        "final_val_loss": final if math.isfinite(final) else None,
        "diverged": diverged,
        "steps_done": curve[-1][0] if not diverged else step + 1,
        "ms_per_step": 1000 * train_seconds / max(1, step + 1),
        "state_bytes_per_param": state_bytes_per_param(optimizer, model),
        "params": model.num_params(),
        "tokens": cfg.steps * cfg.batch_size * cfg.context,
        "cpu_seconds": time.process_time() - cpu0,
    }


def _train_step(cfg: RunConfig, corpus: Corpus, step: int, model, forward, optimizer, spec,
                device) -> float:
    """One step of the lab's loop (schedule, batch, clipping) without a scaler or ranks; returns
    the loss."""
    set_lr(optimizer, step, cfg)
    x, y = train_batch(corpus.train, step, cfg.seed, cfg.batch_size, cfg.context)
    with ev.autocast_for(device, cfg.dtype):
        _, loss = forward(x.to(device), y.to(device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step(**spec.step_kwargs(loss.detach()))
    return float(loss.detach())  # synchronises the device: honest timing
