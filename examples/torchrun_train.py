"""A plain training loop with AdamHD under torchrun: DDP by default, FSDP2 with ``--fsdp``.

    torchrun --standalone --nproc_per_node 2 examples/torchrun_train.py           # DDP
    torchrun --standalone --nproc_per_node 2 examples/torchrun_train.py --fsdp    # FSDP2
    python examples/torchrun_train.py                                             # 1 process

Each step uses the same global batch whatever the number of processes (each rank takes its
slice), so the weights match a 1-process run. ``--out FILE`` saves the final full weights
(rank 0); ``--checkpoint DIR`` saves model and optimizer with torch.distributed.checkpoint.
On CPU the backend is gloo; on GPUs, nccl.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn

from adamhd import AdamHD, param_groups

GLOBAL_BATCH = 16


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(12, 30), nn.LayerNorm(30), nn.GELU(), nn.Linear(30, 30), nn.GELU(),
        nn.Linear(30, 5),
    )


def batch(step: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 100_003 + step)
    x = torch.randn(GLOBAL_BATCH, 12, generator=g)
    return x, torch.tanh(x[:, :5] * 2.0)


def train(steps: int = 20, fsdp: bool = False, seed: int = 0, checkpoint: str | None = None):
    """Train on this process's share of each global batch; return the full final weights."""
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
        else torch.device("cpu")
    model = make_model(seed).to(device)
    if distributed and fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        wrapped = model
    elif distributed:
        wrapped = nn.parallel.DistributedDataParallel(model)
    else:
        wrapped = model
    opt = AdamHD(param_groups(model, weight_decay=0.1), lr=torch.tensor(1e-2))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for step in range(steps):
        x, y = (t.chunk(world)[rank].to(device) for t in batch(step, seed))
        loss = nn.functional.mse_loss(wrapped(x), y)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        if rank == 0 and (step % 10 == 0 or step == steps - 1):
            print(f"step {step:4d}  local loss {loss.item():.5f}", flush=True)
    if checkpoint:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=checkpoint)
    return {
        n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu()
        for n, p in model.named_parameters()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--fsdp", action="store_true", help="FSDP2 (fully_shard) instead of DDP")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="save the final full weights here (rank 0)")
    parser.add_argument("--checkpoint", default=None, help="DCP checkpoint directory")
    args = parser.parse_args()
    if "WORLD_SIZE" in os.environ:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend)
    weights = train(args.steps, args.fsdp, args.seed, args.checkpoint)
    if args.out and (not dist.is_initialized() or dist.get_rank() == 0):
        torch.save(weights, args.out)
    if dist.is_initialized():
        # every rank finishes its collectives before the group goes (gloo aborts otherwise)
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
