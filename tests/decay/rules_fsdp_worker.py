"""2-process (gloo, CPU) FSDP2 worker for Stable Weight Decay and CPR on the wrapper, and the
update bound (``adamhd.transforms.attach_update_bound``): ``python -m
tests.decay.rules_fsdp_worker``. Rank 0 writes full tensors to ``--out``/results.pt.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.tensor.debug import CommDebugMode

from adamhd import with_decoupled_decay
from adamhd.transforms import attach_update_bound
from tests.distributed import common
from tests.distributed.worker import sharded_model

ADAM = with_decoupled_decay(torch.optim.Adam)
CONFIGS = {
    "stable_l2": dict(lr=2e-2, weight_decay=0.05, decay="l2", decay_scaling="stable",
                      foreach=True),
    "stable_huber_cautious": dict(lr=2e-2, weight_decay=0.05, delta=0.1,
                                  decay_scaling="stable", cautious_decay=True, foreach=False),
    "cpr_uniform": dict(lr=2e-2, decay="cpr", cpr_kappa_init="uniform", cpr_kappa_param=0.01,
                        foreach=True),
    "cpr_dependent_cautious": dict(lr=2e-2, decay="cpr", cpr_kappa_init="dependent",
                                   cpr_kappa_param=0.5, cautious_decay=True),
}
BOUND = "adam_update_bound"  # torch Adam with the update bound on both weight matrices
STATE_KEYS = ("cpr_lambda", "cpr_kappa", "cpr_step", "bound_v_weight", "bound_v_update",
              "bound_ratio")


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == BOUND:
        opt = torch.optim.Adam(common.groups(model), lr=2e-2)
        weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
        attach_update_bound(opt, weights, threshold=0.05, iters=2)
        return opt
    return ADAM(common.groups(model), **CONFIGS[name])


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
        "state": {k: common.state_by_name(model, opt, k) for k in STATE_KEYS},
        "comm_counts": counts,
    }


def dcp_run(rank: int, world: int, out: Path) -> dict:
    """Save after 2 steps, load into a fresh model and optimizer, continue: as uninterrupted."""
    data = common.batches()
    model = sharded_model()
    opt = make_optimizer("cpr_dependent_cautious", model)
    common.train(model, opt, data[:2], rank, world)
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(out / "ckpt_rules"))
    common.train(model, opt, data[2:], rank, world)

    resumed = sharded_model()
    resumed_opt = make_optimizer("cpr_dependent_cautious", resumed)
    msd, osd = get_state_dict(resumed, resumed_opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(out / "ckpt_rules"))
    set_state_dict(resumed, resumed_opt, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    common.train(resumed, resumed_opt, data[2:], rank, world)
    return {"continued": common.weights(model), "resumed": common.weights(resumed)}


def collect(rank: int, world: int, out: Path) -> dict:
    results = {name: train_run(rank, world, name) for name in [*CONFIGS, BOUND]}
    results["dcp"] = dcp_run(rank, world, out)
    return results


if __name__ == "__main__":
    common.worker_main(collect)
