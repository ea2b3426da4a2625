"""2-process (gloo, CPU) FSDP2 worker for gradient transforms and Lookahead:
``python -m tests.distributed.transforms_worker``. Rank 0 writes ``results.pt`` into ``--out``."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.distributed.tensor.debug import CommDebugMode
from torch.utils._pytree import tree_map

from adamhd import transforms
from tests.distributed import common
from tests.distributed import transforms_common as tc
from tests.distributed.worker import sharded_model


def steps(model, opt, data, rank, world) -> list[dict[str, int]]:
    counts = []
    for batch in data:
        x, y = common.local_batch(batch, rank, world)
        nn.functional.mse_loss(model(x), y).backward()
        with CommDebugMode() as comm:
            opt.step()
        counts.append({str(op): n for op, n in comm.get_comm_counts().items()})
        opt.zero_grad()
    return counts


def transform_run(rank: int, world: int, case: str) -> dict:
    model = sharded_model()
    opt = tc.transform_optimizer(model, case)
    counts = steps(model, opt, common.batches(), rank, world)
    return {"weights": common.weights(model), "comm_counts": counts}


def clone_tree(tree):
    return tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, tree)


def lookahead_run(rank: int, world: int, out: Path) -> dict:
    data = common.batches()
    model = sharded_model()
    opt = tc.lookahead_optimizer(model)
    steps(model, opt, data[: tc.RESUME_AT], rank, world)
    saved_model, saved_opt = clone_tree(model.state_dict()), clone_tree(opt.state_dict())
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(out / "lookahead_dcp"))
    steps(model, opt, data[tc.RESUME_AT :], rank, world)
    slow_types = {type(s[tc.SLOW_KEY]).__name__ for s in opt.state.values()}

    resumed = sharded_model()
    resumed.load_state_dict(saved_model)
    resumed_opt = tc.lookahead_optimizer(resumed)
    resumed_opt.load_state_dict(saved_opt)
    steps(resumed, resumed_opt, data[tc.RESUME_AT :], rank, world)

    # torch.distributed.checkpoint into a fresh model and Lookahead (DCP initialises its state)
    fresh = sharded_model()
    fresh_opt = tc.lookahead_optimizer(fresh)
    msd, osd = get_state_dict(fresh, fresh_opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(out / "lookahead_dcp"))
    set_state_dict(fresh, fresh_opt, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    steps(fresh, fresh_opt, data[tc.RESUME_AT :], rank, world)
    return {
        "dcp_weights": common.weights(fresh),
        "dcp_slow": tc.slow_weights(fresh, fresh_opt),
        "dcp_step": [g["lookahead_step"] for g in fresh_opt.param_groups],
        "weights": common.weights(model),
        "slow": tc.slow_weights(model, opt),
        "slow_types": slow_types,
        "slow_is_sharded": all(
            isinstance(s[tc.SLOW_KEY], DTensor) and s[tc.SLOW_KEY].placements[0].is_shard()
            for s in opt.state.values()
        ),
        "resumed_weights": common.weights(resumed),
        "resumed_slow": tc.slow_weights(resumed, resumed_opt),
        "resumed_step": [g["lookahead_step"] for g in resumed_opt.param_groups],
    }


def tp_run(world: int) -> dict:
    """Plain calls of each transform on DTensors sharded on dims 0, 1 and 2 of one mesh."""
    mesh = init_device_mesh("cpu", (world,))
    result = {}
    for name in transforms.TRANSFORMS:
        params = []
        for (p, grad), (_, dim) in zip(tc.tp_inputs(), tc.TP_TENSORS):
            param = nn.Parameter(distribute_tensor(p, mesh, [Shard(dim)]))
            param.grad = distribute_tensor(grad, mesh, [Shard(dim)])
            params.append(param)
        with CommDebugMode() as comm:
            getattr(transforms, name)(params)
        result[name] = {
            "grads": [p.grad.full_tensor() for p in params],
            "comm_counts": {str(op): n for op, n in comm.get_comm_counts().items()},
        }
    return result


def collect(rank: int, world: int, out: Path) -> dict:
    return {
        "transforms": {case: transform_run(rank, world, case) for case in tc.TRANSFORM_CASES},
        "lookahead": lookahead_run(rank, world, out),
        "tensor_parallel": tp_run(world),
    }


if __name__ == "__main__":
    common.worker_main(collect)
