"""Run by test_triton_interpret.py in a subprocess with TRITON_INTERPRET=1 (set before import).

Runs the Triton kernel on CPU tensors (Triton's interpreter) and the reference single-tensor path on
copies, over several steps, and prints the largest differences as JSON.
"""

import json
import math
import sys

import torch

from adamhd.decay import HuberDecay, mean_abs
from adamhd.functional import _single_tensor_adamhd
from adamhd.hyper import AdamStep
from adamhd.kernels import triton_adamhd


def state(shapes, dtype, amsgrad, adaptive, seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    return dict(
        ps=ps,
        ms=[torch.zeros_like(p) for p in ps],
        vs=[torch.zeros_like(p) for p in ps],
        mx=[torch.zeros_like(p) for p in ps] if amsgrad else [],
        steps=[torch.zeros(()) for _ in ps],
        mus=[mean_abs(p).clone() for p in ps] if adaptive else [],
    )


def run(case):
    dtype = getattr(torch, case["dtype"])
    decay = HuberDecay(delta=case["delta"], form=case["form"])
    shapes = [(0,), (), (7,), (33, 17), (3000,)]
    kw = dict(decay=decay, amsgrad=case["amsgrad"], beta1=0.9, beta2=0.999, lr=1e-2,
              weight_decay=case["wd"], eps=1e-8, maximize=case["maximize"])
    hyper = AdamStep(decay=decay, amsgrad=case["amsgrad"], beta1=0.9, beta2=0.999, lr=1e-2,
                     weight_decay=case["wd"], eps=1e-8, maximize=case["maximize"])
    a = state(shapes, dtype, case["amsgrad"], decay.adaptive)
    b = state(shapes, torch.float32 if dtype != torch.float32 else dtype, case["amsgrad"],
              decay.adaptive)
    b["ps"] = [p.float().clone() for p in a["ps"]]
    gen = torch.Generator().manual_seed(1)
    scale = case.get("grad_scale")
    for _ in range(case["steps"]):
        gs = [torch.randn(p.shape, generator=gen) for p in a["ps"]]
        ga = [(x * scale if scale else x).to(dtype) for x in gs]
        triton_adamhd.fused_adamhd_triton(
            a["ps"], ga, a["ms"], a["vs"], a["mx"], a["steps"], a["mus"], **kw,
            grad_scale=torch.tensor(float(scale)) if scale else None,
            found_inf=torch.tensor(0.0) if scale else None)
        _single_tensor_adamhd(b["ps"], [x.to(dtype).float() for x in gs], b["ms"], b["vs"],
                              b["mx"], b["steps"], b["mus"], hyper)
    diff = max((x.float() - y).abs().max().item() if x.numel() else 0.0
               for x, y in zip(a["ps"], b["ps"]))
    mu_diff = max([abs(x.item() - y.item()) for x, y in zip(a["mus"], b["mus"])] or [0.0])
    return {"diff": diff, "mu_diff": mu_diff, "steps": [s.item() for s in a["steps"]]}


def skipped_step():
    a = state([(100,)], torch.float32, False, True)
    before = [t.clone() for t in a["ps"] + a["ms"] + a["vs"] + a["steps"] + a["mus"]]
    triton_adamhd.fused_adamhd_triton(
        a["ps"], [torch.randn(100)], a["ms"], a["vs"], [], a["steps"], a["mus"],
        decay=HuberDecay(), amsgrad=False, beta1=0.9, beta2=0.999, lr=1e-2, weight_decay=0.1,
        eps=1e-8, maximize=False, grad_scale=torch.tensor(2.0), found_inf=torch.tensor(1.0))
    after = a["ps"] + a["ms"] + a["vs"] + a["steps"] + a["mus"]
    return all(torch.equal(x, y) for x, y in zip(before, after))


if __name__ == "__main__":
    cases = json.loads(sys.argv[1])
    out = {"results": [run(c) for c in cases], "skipped_step_unchanged": skipped_step(),
           "inf": math.inf}
    print("RESULT " + json.dumps(out))
