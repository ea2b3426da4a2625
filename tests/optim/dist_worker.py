"""2-process (gloo, CPU) FSDP2 worker for tests/optim: ``python -m tests.optim.dist_worker``.

NSGDA and AdaLo train the unevenly sharded model of tests/distributed; rank 0 writes full
weights, state and per-step collective counts to ``results.pt``. The optimizers without DTensor
support must refuse sharded parameters.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor.debug import CommDebugMode

from tests.distributed import common
from tests.distributed.worker import sharded_model
from tests.optim.dist_configs import CONFIGS, SURVEY, SURVEY_DCP, make_optimizer, step


def train(rank: int, world: int, name: str) -> dict:
    model = sharded_model()
    opt = make_optimizer(name, model)
    counts = []
    for t, batch in enumerate(common.batches()):
        x, y = common.local_batch(batch, rank, world)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        with CommDebugMode() as comm:
            step(opt, t)
        counts.append({str(op): n for op, n in comm.get_comm_counts().items()})
        opt.zero_grad()
    keys = sorted({k for s in opt.state.values() for k in s})  # the same gather order on all ranks
    result = {
        "weights": common.weights(model),
        "state": {k: common.state_by_name(model, opt, k) for k in keys if k != "sign"},
        "comm_counts": counts,
    }
    if "sign" in keys:  # SMMF: each rank packs its own shard's signs
        result["signs"] = smmf_signs(model, opt, world)
    return result


def refusals() -> dict[str, str]:
    from adamhd import FCAdam

    out = {}
    for cls in (FCAdam,):  # Adafactor, SMMF and SM3 train sharded (SURVEY configs)
        try:
            cls(sharded_model().parameters())
            out[cls.__name__] = ""
        except RuntimeError as err:
            out[cls.__name__] = str(err)
    return out


def smmf_signs(model: nn.Module, opt, world: int) -> dict[str, torch.Tensor]:
    """SMMF's sign flags of every whole tensor: each rank's unpacked flags, gathered in order."""
    from adamhd.optim.smmf import unpack_signs

    out = {}
    for name, p in model.named_parameters():
        flags = unpack_signs(opt.state[p]["sign"], p.to_local().numel())
        everyone = [None] * world
        dist.all_gather_object(everyone, flags)
        out[name] = torch.cat(everyone)
    return out


def _steps(model, opt, batches, first: int, rank: int, world: int) -> None:
    for t, batch in enumerate(batches, start=first):
        x, y = common.local_batch(batch, rank, world)
        nn.functional.mse_loss(model(x), y).backward()
        step(opt, t)
        opt.zero_grad()


def dcp_resume(rank: int, world: int, out: Path, name: str) -> dict:
    """2 steps, a ``torch.distributed.checkpoint`` save, a fresh model and optimizer loaded from
    it, 2 more steps: compared with the uninterrupted run of ``name`` (its factors are DTensors,
    the threshold a plain tensor)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    data = common.batches()
    model = sharded_model()
    opt = make_optimizer(name, model)
    _steps(model, opt, data[:2], 0, rank, world)
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(out / f"ckpt_{name}"))
    model = sharded_model()
    opt = make_optimizer(name, model)
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(out / f"ckpt_{name}"))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    _steps(model, opt, data[2:], 2, rank, world)
    keys = sorted({k for s in opt.state.values() for k in s})
    return {"weights": common.weights(model),
            "state": {k: common.state_by_name(model, opt, k) for k in keys}}


def collect(rank: int, world: int, out: Path) -> dict:
    results = {name: train(rank, world, name) for name in CONFIGS}
    results["survey"] = {name: train(rank, world, name) for name in SURVEY}
    results["survey_dcp"] = {name: dcp_resume(rank, world, out, name) for name in SURVEY_DCP}
    results["refusals"] = refusals()
    return results


if __name__ == "__main__":
    common.worker_main(collect)
