"""Run by test_compile_fresh.py in a FRESH process: graph breaks of the first compiled steps.

Prints ``RESULT {"adamw": n, "adamhd": m}``: the graph breaks counted by dynamo while
``torch.compile(opt.step)`` runs three steps of torch's fused AdamW, then of AdamHD's default
(fused CPU) path, whose kernel this process has not loaded before AdamHD's construction.
"""

import json

import torch
from torch._dynamo.utils import counters


def breaks(make) -> int:
    torch._dynamo.reset()
    counters.clear()
    gen = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(33, 17), (100,), ()]]
    opt = make(ps)
    step = torch.compile(opt.step)
    for _ in range(3):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen)
        step()
    return sum(counters["graph_break"].values())


if __name__ == "__main__":
    from adamhd import AdamHD
    from adamhd.kernels import cpu

    assert cpu.loaded() is None  # fresh: nothing loaded before the optimizer is built
    out = {"adamw": breaks(lambda ps: torch.optim.AdamW(ps, fused=True))}
    out["adamhd"] = breaks(lambda ps: AdamHD(ps, lr=1e-2))
    out["adamhd_fused"] = cpu.loaded() is not None
    print("RESULT " + json.dumps(out))
