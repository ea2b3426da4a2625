"""Running the lab under torchrun: process group, model wrapping, batch slices, full state dicts.

    torchrun --standalone --nproc_per_node 2 -m adamhd.cli compare ...          # DDP
    torchrun --standalone --nproc_per_node 2 -m adamhd.cli compare --fsdp ...   # FSDP2

Every rank draws the same global batch and trains on its equal slice of it, so the gradient (the
average of the per-rank means) is the 1-process gradient up to float rounding. Rank 0 alone
evaluates (on a plain module holding the full weights) and writes metrics, checkpoints and the
report; every collective is entered by all ranks.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import nn

# rank 0 evaluates alone (final losses, pruning curves) while the others wait in a collective
TIMEOUT = datetime.timedelta(hours=6)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str) -> None:
    """Start the process group from torchrun's env vars (gloo on CPU, nccl on CUDA)."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=TIMEOUT)


def shutdown() -> None:
    if dist.is_initialized():
        dist.barrier()  # no rank tears the group down while another still talks (gloo aborts)
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def default_threads() -> int:
    """CPU threads per process: the cores shared among the processes of this machine."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (os.cpu_count() or 1) // local)


def local_batch(global_batch: int) -> int:
    if global_batch % world():
        raise ValueError(f"--batch-size {global_batch} is the global batch; it must be divisible "
                         f"by the number of processes ({world()})")
    return global_batch // world()


def my_slice(t: torch.Tensor) -> torch.Tensor:
    """This rank's equal, contiguous share of a global batch."""
    n = local_batch(t.shape[0])
    return t[rank() * n : (rank() + 1) * n]


def mean_over_ranks(t: torch.Tensor) -> float:
    """The global mean of per-rank means of equal-size slices."""
    t = t.detach()
    if dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= world()
    return float(t)


def as_float(t) -> float:
    """A scalar that may be a DTensor (clip_grad_norm_ of FSDP2 gradients)."""
    return float(t.full_tensor() if hasattr(t, "full_tensor") else t)


class Parallel:
    """How the model is trained: plain (1 process), DDP, or FSDP2 (fully_shard per block + root).

    `module` is the model the optimizer is built on (and whose parameters are clipped);
    `forward` is what a training step calls.
    """

    def __init__(self, model: nn.Module, fsdp: bool = False):
        self.module = model
        self.fsdp = fsdp and dist.is_initialized()
        self.forward = model
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            for block in model.blocks:
                fully_shard(block)
            fully_shard(model)
        elif dist.is_initialized():
            self.forward = nn.parallel.DistributedDataParallel(model)

    def full_model(self, plain_copy) -> nn.Module | None:
        """The model with full weights on rank 0 (None elsewhere). Under FSDP2 this is a
        collective: the weights are gathered into `plain_copy()`, a module built once."""
        if not self.fsdp:
            return self.module if is_main() else None
        msd = self.state_dicts(None)[0]
        if not is_main():
            return None
        if not hasattr(self, "_copy"):
            self._copy = plain_copy()
        self._copy.load_state_dict(msd)
        return self._copy

    def state_dicts(self, optimizer) -> tuple[dict, dict | None]:
        """Full (unsharded) model and optimizer state dicts, on CPU on rank 0 under FSDP2; plain
        `state_dict()`s otherwise. Under FSDP2 every rank must call this."""
        if not self.fsdp:
            return self.module.state_dict(), optimizer.state_dict() if optimizer else None
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd = get_model_state_dict(self.module, options=opts)
        osd = get_optimizer_state_dict(self.module, optimizer, options=opts) if optimizer \
            else None
        return msd, osd

    def load_state_dicts(self, optimizer, msd: dict, osd: dict) -> None:
        """Load full state dicts (as `state_dicts` returns them) on every rank."""
        by_name = any(isinstance(k, str) for k in osd.get("state", {}))  # saved under FSDP2
        if not self.fsdp and not by_name:
            self.module.load_state_dict(msd)
            optimizer.load_state_dict(osd)
            return
        if self.fsdp and not by_name:
            osd = _keyed_by_name(self.module, optimizer, osd)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(self.module, optimizer, model_state_dict=msd, optim_state_dict=osd,
                       options=StateDictOptions(full_state_dict=True))


def _keyed_by_name(model: nn.Module, optimizer, osd: dict) -> dict:
    """An optimizer state dict keyed by parameter index (`optimizer.state_dict()`) re-keyed by
    parameter name, the form `set_state_dict` reads. The optimizer must list its parameters in
    the same order as the one that saved it (it is built the same way)."""
    names = {id(p): n for n, p in model.named_parameters()}
    index_to_name = {}
    for saved, group in zip(osd["param_groups"], optimizer.param_groups, strict=True):
        for i, param in zip(saved["params"], group["params"], strict=True):
            index_to_name[i] = names[id(param)]
    return {
        "state": {index_to_name[i]: v for i, v in osd["state"].items()},
        "param_groups": [{**g, "params": [index_to_name[i] for i in g["params"]]}
                         for g in osd["param_groups"]],
    }
