"""Run by tests/optim/test_state_loads.py in a subprocess (one gloo rank): optimizers of DTensor
parameters (``Shard(0)`` on a 1-rank mesh) load their own DTensor state, and refuse a state
tensor of the wrong global shape before anything changes. Prints one JSON line per optimizer."""

from __future__ import annotations

import copy
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

import adamhd
from adamhd.state import StateError

# name -> (factory, the key of the matrix's state to corrupt)
CASES = {
    "NSGDA": (lambda ps: adamhd.NSGDA(ps, lr=0.05, weight_decay=0.1), "momentum_buffer"),
    "SM3": (lambda ps: adamhd.SM3(ps, lr=0.05, momentum=0.5), "accumulator_1"),
    "Adafactor": (lambda ps: adamhd.Adafactor(ps, lr=0.05), "exp_avg_sq_col"),
    "SMMF": (lambda ps: adamhd.SMMF(ps, lr=0.05), "col_v"),
    "Amos": (lambda ps: adamhd.Amos(ps, lr=0.05), "amos_v"),
    "AdamW+decay": (lambda ps: adamhd.with_decoupled_decay(torch.optim.AdamW)(ps, lr=0.05),
                    "exp_avg"),
}


def main(port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=0, world_size=1)
    mesh = init_device_mesh("cpu", (1,))
    for name, (make, key) in CASES.items():
        g = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(distribute_tensor(torch.randn(s, generator=g), mesh,
                                                       [Shard(0)])) for s in [(8, 6), (6,)]]
        opt = make(params)
        for p in params:
            p.grad = distribute_tensor(torch.randn(p.shape, generator=g), mesh, [Shard(0)])
        opt.step()
        saved = copy.deepcopy(opt.state_dict())
        opt.load_state_dict(copy.deepcopy(saved))  # its own DTensor state: accepted
        opt.step()  # and checked strictly at this step
        before = copy.deepcopy(opt.state_dict())
        bad = copy.deepcopy(saved)
        bad["state"][0][key] = distribute_tensor(torch.zeros(99), mesh, [Shard(0)])
        try:
            opt.load_state_dict(bad)
            message = None
        except StateError as error:
            message = str(error)
        after = opt.state_dict()
        unchanged = all(
            torch.equal(torch.as_tensor(v.full_tensor() if hasattr(v, "full_tensor") else v),
                        torch.as_tensor(after["state"][i][k].full_tensor()
                                        if hasattr(after["state"][i][k], "full_tensor")
                                        else after["state"][i][k]))
            for i, s in before["state"].items() for k, v in s.items()
        ) and before["param_groups"][0]["lr"] == after["param_groups"][0]["lr"]
        print(json.dumps({"name": name, "key": key, "message": message, "unchanged": unchanged,
                          "dtensor": type(saved["state"][0][key]).__name__ == "DTensor"}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
