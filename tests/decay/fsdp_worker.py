"""2-process (gloo, CPU) FSDP2 worker for the wrapper: ``python -m tests.decay.fsdp_worker``.

Each rank trains the sharded model of ``tests.distributed.common`` with wrapped torch optimizers
and a DCP save/load; rank 0 writes full tensors to ``--out``/results.pt for the tests.
"""

from __future__ import annotations

from pathlib import Path

import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.tensor.debug import CommDebugMode

from tests.decay.fsdp_configs import CONFIGS, make_optimizer
from tests.distributed import common
from tests.distributed.worker import sharded_model


def train_run(rank: int, world: int, name: str) -> dict:
    model = sharded_model()
    opt = make_optimizer(name, model)
    counts = []
    for batch in common.batches():
        x, y = common.local_batch(batch, rank, world)
        nn.functional.mse_loss(model(x), y).backward()
        with CommDebugMode() as comm:
            opt.step()
        counts.append({str(op): n for op, n in comm.get_comm_counts().items()})
        opt.zero_grad()
    return {
        "weights": common.weights(model),
        "delta_mu": common.state_by_name(model, opt, "delta_mu"),
        "comm_counts": counts,
    }


def dcp_run(rank: int, world: int, out: Path) -> dict:
    data = common.batches()
    model = sharded_model()
    opt = make_optimizer("adam_huber", model)
    common.train(model, opt, data[:2], rank, world)
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(out / "ckpt"))
    common.train(model, opt, data[2:], rank, world)

    resumed = sharded_model()
    resumed_opt = make_optimizer("adam_huber", resumed)
    msd, osd = get_state_dict(resumed, resumed_opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(out / "ckpt"))
    set_state_dict(resumed, resumed_opt, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    mus = common.state_by_name(resumed, resumed_opt, "delta_mu")
    common.train(resumed, resumed_opt, data[2:], rank, world)
    return {
        "continued": common.weights(model),
        "resumed": common.weights(resumed),
        "loaded_mu_dtypes": {n: str(m.dtype) for n, m in mus.items()},
    }


def collect(rank: int, world: int, out: Path) -> dict:
    results = {name: train_run(rank, world, name) for name in CONFIGS}
    results["dcp"] = dcp_run(rank, world, out)
    return results


if __name__ == "__main__":
    common.worker_main(collect)
