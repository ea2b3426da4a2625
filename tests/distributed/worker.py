"""2-process (gloo, CPU) worker for ``tests/distributed``: ``python -m tests.distributed.worker``.

Every rank runs each scenario; rank 0 writes ``results.pt`` (full tensors, gathered) into
``--out``. The tests compare those numbers with single-process runs.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor.debug import CommDebugMode
from torch.nn.parallel import DistributedDataParallel as DDP

from adamhd import AdamHD
from adamhd.checkpoint import ScalesAsSavedPlanner
from adamhd.distributed import local_shard
from adamhd.optim.adamhd.scales import SCALE_KEYS
from tests.distributed import common


def sharded_model() -> nn.Module:
    model = common.make_model()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def fsdp_run(rank: int, world: int, config: dict) -> dict:
    model = sharded_model()
    opt = common.make_optimizer(model, **config)
    counts = []
    for batch in common.batches():
        x, y = common.local_batch(batch, rank, world)
        nn.functional.mse_loss(model(x), y).backward()
        with CommDebugMode() as comm:
            opt.step()
        counts.append({str(op): n for op, n in comm.get_comm_counts().items()})
        opt.zero_grad()
    mus = common.state_by_name(model, opt, "delta_mu")
    everyone = [None] * world
    dist.all_gather_object(everyone, {n: m.item() for n, m in mus.items()})
    local_mean = {
        n: p.to_local().detach().abs().mean().item() for n, p in model.named_parameters()
    }
    return {
        "weights": common.weights(model),
        "exp_avg": common.state_by_name(model, opt, "exp_avg"),
        "exp_avg_sq": common.state_by_name(model, opt, "exp_avg_sq"),
        "adanorm_e": common.state_by_name(model, opt, "adanorm_e"),
        "prev_grad": common.state_by_name(model, opt, "prev_grad"),
        "delta_mu": mus,
        "delta_mu_all_ranks": everyone,
        "local_shard_mean": local_mean,
        "comm_counts": counts,
        "paths": opt.paths,
    }


def lowbit_run(rank: int, world: int, config: dict) -> dict:
    """Low-bit moments under FSDP2 (shards of whole 256-element blocks: ``common.LOWBIT``)."""
    model, opt = lowbit_sharded(config)
    common.train(model, opt, common.lowbit_batches(), rank, world)
    scales = {n: opt.state[p]["exp_avg_scale"].clone() for n, p in model.named_parameters()
              if "exp_avg_scale" in opt.state[p]}
    everyone = [None] * world
    dist.all_gather_object(everyone, scales)
    return {
        "weights": common.weights(model),
        "exp_avg": common.state_by_name(model, opt, "exp_avg"),
        "exp_avg_sq": common.state_by_name(model, opt, "exp_avg_sq"),
        "scales": everyone,
        "paths": opt.paths,
    }


def fsdp_optimizer(model: nn.Module, config: dict):
    """``model`` with each Linear and the whole sharded by FSDP2, and its AdamHD of ``config``."""
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model, common.make_optimizer(model, **config)


def lowbit_sharded(config: dict):
    return fsdp_optimizer(common.lowbit_model(), config)


def lowbit_snapshot(model, opt, world: int) -> dict:
    """Weights and every state byte (codes and bf16 moments gathered, each rank's scales)."""
    keys = ("step", "delta_mu", "exp_avg", "exp_avg_sq")
    mine = {n: {k: opt.state[p][k].clone() for k in SCALE_KEYS if k in opt.state[p]}
            for n, p in model.named_parameters()}
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    return {"weights": common.weights(model), "scales": everyone,
            **{k: common.state_by_name(model, opt, k) for k in keys}}


def lowbit_dcp_run(rank: int, world: int, out: Path) -> dict:
    """int8 state under FSDP2: DCP save after 2 steps, resume on the same 2 ranks."""
    config, data = common.LOWBIT_DCP, common.lowbit_batches()
    model, opt = lowbit_sharded(config)
    common.train(model, opt, data[:2], rank, world)
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(out / "ckpt_lowbit"))
    saved = lowbit_snapshot(model, opt, world)
    common.train(model, opt, data[2:], rank, world)
    result = {"saved": saved, "continued": lowbit_snapshot(model, opt, world)}

    model, opt = lowbit_sharded(config)
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(out / "ckpt_lowbit"))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    result["loaded"] = lowbit_snapshot(model, opt, world)
    # the way to another layout: decoded to float32 moments on this layout, saved with DCP
    opt32 = common.make_optimizer(model, **{**config, "state_dtype": "float32"})
    opt32.load_state_dict(opt.state_dict())
    msd, osd = get_state_dict(model, opt32)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(out / "ckpt_lowbit_fp32"))
    result["decoded"] = {k: common.state_by_name(model, opt32, k)
                         for k in ("exp_avg", "exp_avg_sq")}
    common.train(model, opt, data[2:], rank, world)
    result["resumed"] = lowbit_snapshot(model, opt, world)

    # a 1-process state_dict (plain codes and per-tensor scales) into the sharded optimizer in
    # memory: refused (DCP reshards the codes; the planner's route is tested in reshard_run)
    plain = common.lowbit_model()
    plain_opt = common.make_optimizer(plain, **config)
    common.train(plain, plain_opt, data[:1])
    before = lowbit_snapshot(model, opt, world)
    try:
        opt.load_state_dict(plain_opt.state_dict())
        result["plain_error"] = ""
    except ValueError as err:
        result["plain_error"] = str(err)
    result["after_refusal"] = lowbit_snapshot(model, opt, world)
    result["before_refusal"] = before
    return result


def reshard_sharded(config: dict):
    return fsdp_optimizer(common.reshard_model(), config)


def load_with_planner(model, opt, path: Path) -> None:
    """DCP load through ``adamhd.checkpoint.ScalesAsSavedPlanner`` (any saved layout)."""
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(path), planner=ScalesAsSavedPlanner())
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])


def reshard_run(rank: int, world: int, out: Path) -> dict:
    """Low-bit state with DCP through the planner, shards not whole blocks: saved after 2 steps
    (the test loads it in 1 process), continued 1 and 2 steps; reloaded on the same 2 ranks and
    resumed 2 steps; a 1-process checkpoint (saved by conftest) loaded and stepped once."""
    data = common.reshard_batches()
    result = {}
    for name, config in common.RESHARD.items():
        model, opt = reshard_sharded(config)
        common.train(model, opt, data[:2], rank, world)
        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(out / f"ckpt_{name}_2proc"))
        flat = StateDictOptions(flatten_optimizer_state_dict=True)
        msd, osd = get_state_dict(model, opt, options=flat)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(out / f"ckpt_{name}_2proc_flat"))
        r = {"saved": lowbit_snapshot(model, opt, world)}
        common.train(model, opt, data[2:3], rank, world)
        r["continued1"] = lowbit_snapshot(model, opt, world)
        common.train(model, opt, data[3:], rank, world)
        r["continued"] = lowbit_snapshot(model, opt, world)

        model, opt = reshard_sharded(config)
        load_with_planner(model, opt, out / f"ckpt_{name}_2proc")
        r["loaded"] = lowbit_snapshot(model, opt, world)
        common.train(model, opt, data[2:], rank, world)
        r["resumed"] = lowbit_snapshot(model, opt, world)

        model, opt = reshard_sharded(config)
        load_with_planner(model, opt, out / f"ckpt_{name}_1proc")
        r["from_one"] = lowbit_snapshot(model, opt, world)
        common.train(model, opt, data[2:3], rank, world)
        r["from_one_stepped"] = lowbit_snapshot(model, opt, world)
        result[name] = r
    return result


def other_dim_run(rank: int, world: int) -> dict:
    """int8 state of a parameter sharded on dim 1 (as tensor parallelism shards a column):
    ``state_dict()`` and ``load_state_dict`` refuse it, the latter before anything changes."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    p = nn.Parameter(distribute_tensor(torch.randn(8, 64), mesh, [Shard(1)]))
    opt = AdamHD([p], state_dtype="int8", min_8bit_size=0)
    p.grad = distribute_tensor(torch.randn(8, 64), mesh, [Shard(1)])
    opt.step()
    result = {}
    try:
        opt.state_dict()
    except NotImplementedError as err:
        result["save_error"] = str(err)
    before = {k: local_shard(v).clone() for k, v in opt.state[p].items()}
    try:  # torch's state_dict (plain per-rank scales), as another layout's would come
        opt.load_state_dict(torch.optim.Optimizer.state_dict(opt))
    except NotImplementedError as err:
        result["load_error"] = str(err)
    result["unchanged"] = all(torch.equal(local_shard(opt.state[p][k]), v)
                              for k, v in before.items())
    return result


def ddp_run(rank: int, world: int) -> dict:
    model = DDP(common.make_model())
    opt = common.make_optimizer(model.module, foreach=True)
    common.train(model, opt, common.batches(), rank, world)
    return {"weights": common.weights(model.module)}


def zero_run(rank: int, world: int) -> dict:
    model = DDP(common.make_model())
    opt = ZeroRedundancyOptimizer(
        model.module.parameters(), optimizer_class=AdamHD, **common.BASE, foreach=True
    )
    common.train(model, opt, common.batches(), rank, world)
    opt.consolidate_state_dict(to=0)
    state = opt.state_dict() if rank == 0 else None
    mus = {}
    if state is not None:
        names = [n for n, _ in model.module.named_parameters()]
        mus = {names[i]: s["delta_mu"].clone() for i, s in state["state"].items()}
    return {"weights": common.weights(model.module), "delta_mu": mus}


def fused_error(rank: int, world: int) -> str:
    model = sharded_model()
    try:
        AdamHD(model.parameters(), fused=True)
    except RuntimeError as err:
        return str(err)
    return ""


def dcp_run(rank: int, world: int, out: Path) -> dict:
    result = {}
    # DCP's optimizer-state initialisation (a step with lr=0 and zero grads) changes no weight.
    model = sharded_model()
    opt = common.make_optimizer(model, foreach=True)
    before = common.weights(model)
    get_state_dict(model, opt)
    result["init_weights_before"] = before
    result["init_weights_after"] = common.weights(model)
    result["init_delta_mu"] = common.state_by_name(model, opt, "delta_mu")

    # 2 ranks save after 2 steps; the test reloads the checkpoint in 1 process.
    data = common.batches()
    model = sharded_model()
    opt = common.make_optimizer(model, foreach=True)
    common.train(model, opt, data[:2], rank, world)
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(out / "ckpt_2proc"))
    common.train(model, opt, data[2:], rank, world)
    result["continued_weights"] = common.weights(model)

    # 1 process saved after 2 steps (written by the test before this launch); 2 ranks resume.
    model = sharded_model()
    opt = common.make_optimizer(model, foreach=True)
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(out / "ckpt_1proc"))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    result["resumed_delta_mu"] = common.state_by_name(model, opt, "delta_mu")
    steps = common.state_by_name(model, opt, "step")
    result["resumed_step"] = {n: s.item() for n, s in steps.items()}
    common.train(model, opt, data[2:], rank, world)
    result["resumed_weights"] = common.weights(model)
    return result


def collect(rank: int, world: int, out: Path) -> dict:
    return {
        "fsdp": {name: fsdp_run(rank, world, cfg) for name, cfg in common.FSDP_CONFIGS.items()},
        "lowbit_dcp": lowbit_dcp_run(rank, world, out),
        "reshard": reshard_run(rank, world, out),
        "other_dim": other_dim_run(rank, world),
        "lowbit": {name: lowbit_run(rank, world, cfg) for name, cfg in common.LOWBIT.items()},
        "ddp": ddp_run(rank, world),
        "zero": zero_run(rank, world),
        "dcp": dcp_run(rank, world, out),
        "fused_error": fused_error(rank, world),
    }


if __name__ == "__main__":
    common.worker_main(collect)
