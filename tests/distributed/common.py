"""Shared by the 2-process workers and the single-process references of ``tests/distributed``.

The model has shapes that FSDP2 shards unevenly over 2 ranks (9 rows -> 5 + 4, 3 -> 2 + 1), so
a mean taken on a local shard differs from the whole tensor's, and the loss is a mean over the
global batch, so DDP/FSDP gradient averaging equals the single-process full-batch gradient.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from adamhd import AdamHD

WORLD = 2
GLOBAL_BATCH = 8
STEPS = 4

# name -> AdamHD keyword arguments of the configurations tested under FSDP2
FSDP_CONFIGS: dict[str, dict] = {
    "foreach_explicit": dict(foreach=True, decay_form="explicit"),
    "single_proximal_amsgrad": dict(foreach=False, decay_form="proximal", amsgrad=True),
    "foreach_fixed_delta": dict(foreach=True, delta=0.05),
    # update rules with whole-tensor statistics (norms, kept fraction) and rule state
    "foreach_rules": dict(foreach=True, update="atan2", cautious=True, trust_ratio=True,
                          adanorm=True, diffgrad=True, cautious_decay=True),
    "single_rules": dict(foreach=False, update="softplus", trust_ratio=True, adanorm=True,
                         decay_form="proximal"),
}
#: the configurations whose update rule takes whole-tensor norms or means (more all-reduces)
RULE_CONFIGS = ("foreach_rules", "single_rules")
BASE = dict(lr=2e-2, weight_decay=0.5)


#: low-bit moments (issue 19): the (8, 64) weight is 2 blocks of 256, one per rank's shard
LOWBIT: dict[str, dict] = {
    "int8_foreach": dict(foreach=True, state_dtype="int8", min_8bit_size=256),
    "int8_single_proximal": dict(foreach=False, state_dtype="int8", min_8bit_size=256,
                                 decay_form="proximal"),
    "bf16_foreach": dict(foreach=True, state_dtype="bfloat16", rounding_seed=3),
}

#: DCP of int8 state: every tensor coded (min_8bit_size=0), shards of 1-2 blocks, bias shards
#: of 4, 2 and 1 elements
LOWBIT_DCP = dict(foreach=True, state_dtype="int8", min_8bit_size=0)


#: DCP resharding of low-bit state (2 ranks <-> 1 process): the (9, 100) weight's shards are 500
#: and 400 elements, so a 256-element block of one process straddles the 2-rank boundary
RESHARD: dict[str, dict] = {
    "int8": dict(foreach=True, state_dtype="int8", min_8bit_size=0),
    "bf16": dict(foreach=True, state_dtype="bfloat16", rounding_seed=5),
}


def mlp(width: int, hidden: int) -> nn.Module:
    """Linear(width, hidden) -> tanh -> Linear(hidden, 3), seeded."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, 3))


def regression_batches(width: int, seed: int,
                       steps: int = STEPS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` global batches of (inputs of ``width``, 3 targets), seeded."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(GLOBAL_BATCH, width, generator=g), torch.randn(GLOBAL_BATCH, 3, generator=g))
        for _ in range(steps)
    ]


reshard_model = partial(mlp, 100, 9)
reshard_batches = partial(regression_batches, 100, 4)


def reshard_reference(name: str, steps: int) -> tuple[nn.Module, AdamHD]:
    """One process, ``steps`` steps of ``RESHARD[name]`` on the global batches."""
    model = reshard_model()
    opt = make_optimizer(model, **RESHARD[name])
    train(model, opt, reshard_batches()[:steps])
    return model, opt


lowbit_model = partial(mlp, 64, 8)
lowbit_batches = partial(regression_batches, 64, 2)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 3))


def batches(steps: int = STEPS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(GLOBAL_BATCH, 6, generator=g), torch.randn(GLOBAL_BATCH, 3, generator=g))
        for _ in range(steps)
    ]


def groups(model: nn.Module) -> list[dict]:
    """Weights decayed, biases exempt: the exempt group must cost no collective."""
    named = list(model.named_parameters())
    return [
        {"params": [p for n, p in named if n.endswith("weight")]},
        {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, **kwargs) -> AdamHD:
    return AdamHD(groups(model), **{**BASE, **kwargs})


def local_batch(batch, rank: int, world: int):
    x, y = batch
    return x.chunk(world)[rank], y.chunk(world)[rank]


def train(model, opt, data, rank: int = 0, world: int = 1) -> None:
    for batch in data:
        x, y = local_batch(batch, rank, world)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()


def reference(steps: int = STEPS, **kwargs) -> tuple[nn.Module, AdamHD]:
    """Single-process training on the global batch: what every distributed run must match."""
    model = make_model()
    opt = make_optimizer(model, **kwargs)
    train(model, opt, batches(steps))
    return model, opt


def state_by_name(model: nn.Module, opt, key: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        value = opt.state[p].get(key)
        if value is not None:
            full = value.full_tensor() if hasattr(value, "full_tensor") else value
            out[name] = full.detach().clone()
    return out


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for n, p in model.named_parameters()
    }


Collect = Callable[[int, int, Path], dict]


def worker_main(collect: Collect) -> None:
    """The command line of a worker script (``--out DIR --port N``): run ``collect(rank, world,
    out)`` on ``WORLD`` gloo processes and save rank 0's results to ``DIR/results.pt``.
    ``collect`` must be a module-level function (the spawned processes import it)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_run_worker, args=(WORLD, args.port, args.out, collect), nprocs=WORLD, join=True)


def _run_worker(rank: int, world: int, port: int, out: str, collect: Collect) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    torch.set_num_threads(1)
    results = collect(rank, world, Path(out))
    if rank == 0:
        torch.save(results, Path(out) / "results.pt")
    dist.barrier()
    dist.destroy_process_group()
