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
    unscaled = True
    for _ in range(case["steps"]):
        gs = [torch.randn(p.shape, generator=gen) for p in a["ps"]]
        ga = [(x * scale if scale else x).to(dtype) for x in gs]
        before = [x.clone() for x in ga]
        triton_adamhd.fused_adamhd_triton(
            a["ps"], ga, a["ms"], a["vs"], a["mx"], a["steps"], a["mus"], **kw,
            grad_scale=torch.tensor(float(scale)) if scale else None,
            found_inf=torch.tensor(0.0) if scale else None)
        expected = [(x.float() / scale).to(dtype) if scale else x for x in before]
        unscaled &= all(torch.equal(x, y) for x, y in zip(ga, expected))
        _single_tensor_adamhd(b["ps"], [x.to(dtype).float() for x in gs], b["ms"], b["vs"],
                              b["mx"], b["steps"], b["mus"], hyper)
    diff = max((x.float() - y).abs().max().item() if x.numel() else 0.0
               for x, y in zip(a["ps"], b["ps"]))
    mu_diff = max([abs(x.item() - y.item()) for x, y in zip(a["mus"], b["mus"])] or [0.0])
    return {"diff": diff, "mu_diff": mu_diff, "steps": [s.item() for s in a["steps"]],
            "grads_unscaled": unscaled}


def skipped_step():
    a = state([(100,)], torch.float32, False, True)
    grad = torch.randn(100)
    before = [t.clone() for t in a["ps"] + a["ms"] + a["vs"] + a["steps"] + a["mus"] + [grad]]
    triton_adamhd.fused_adamhd_triton(
        a["ps"], [grad], a["ms"], a["vs"], [], a["steps"], a["mus"],
        decay=HuberDecay(), amsgrad=False, beta1=0.9, beta2=0.999, lr=1e-2, weight_decay=0.1,
        eps=1e-8, maximize=False, grad_scale=torch.tensor(2.0), found_inf=torch.tensor(1.0))
    after = a["ps"] + a["ms"] + a["vs"] + a["steps"] + a["mus"] + [grad]
    return all(torch.equal(x, y) for x, y in zip(before, after))


KW = dict(amsgrad=False, beta1=0.9, beta2=0.999, lr=1e-2, weight_decay=0.1, eps=1e-8,
          maximize=False)


def mixed_dtypes():
    """One call over fp32 and bf16 tensors (two launches) equals one call per dtype."""
    shapes = [((33, 17), torch.float32), ((7,), torch.bfloat16), ((3000,), torch.float32),
              ((), torch.bfloat16), ((0,), torch.float32)]
    gen = torch.Generator().manual_seed(3)
    ps = [torch.randn(s, generator=gen).to(d) for s, d in shapes]
    a, b = state([], torch.float32, False, True), state([], torch.float32, False, True)
    for st in (a, b):
        st.update(ps=[p.clone() for p in ps], ms=[torch.zeros_like(p) for p in ps],
                  vs=[torch.zeros_like(p) for p in ps], steps=[torch.zeros(()) for _ in ps],
                  mus=[mean_abs(p).clone() for p in ps])
    for _ in range(3):
        gs = [torch.randn(p.shape, generator=gen).to(p.dtype) for p in ps]
        triton_adamhd.fused_adamhd_triton(a["ps"], gs, a["ms"], a["vs"], [], a["steps"],
                                          a["mus"], decay=HuberDecay(), **KW)
        for dtype in (torch.float32, torch.bfloat16):
            idx = [i for i, p in enumerate(ps) if p.dtype == dtype]
            triton_adamhd.fused_adamhd_triton(
                *[[st[i] for i in idx] for st in (b["ps"], gs, b["ms"], b["vs"])], [],
                [b["steps"][i] for i in idx], [b["mus"][i] for i in idx], decay=HuberDecay(), **KW)
    keys = ("ps", "ms", "vs", "steps", "mus")
    return all(torch.equal(x, y) for k in keys for x, y in zip(a[k], b[k]))


def non_finite_weight():
    """A NaN weight: mu keeps its value (the NaN statistic does not enter the EMA), the other
    elements stay finite; a non-finite mu takes the statistic."""
    a = state([(100,), (50,)], torch.float32, False, True)
    a["ps"][0][3] = math.nan
    a["mus"][1].fill_(math.inf)
    mu0 = a["mus"][0].clone()
    fresh = a["ps"][1].abs().mean()
    triton_adamhd.fused_adamhd_triton(
        a["ps"], [torch.randn(100), torch.randn(50)], a["ms"], a["vs"], [], a["steps"], a["mus"],
        decay=HuberDecay(), **KW)
    return (torch.equal(a["mus"][0], mu0) and int(torch.isfinite(a["ps"][0]).sum()) == 99
            and abs(a["mus"][1].item() - fresh.item()) < 1e-7)


def options():
    """cautious decay, L2, atan2 and softplus updates against the float64 reference of
    test_fused_options.py: the largest |got - want| / (1e-5*|want| + 1e-6) over weights and
    moments (below 1: within rtol 1e-5, atol 1e-6)."""
    from adamhd.decay import L2Decay
    from adamhd.kernels import update_args
    from tests.kernels.test_fused_options import SHAPES, reference_step, step_record

    worst = 0.0
    for update, decay in [("atan2", HuberDecay(cautious=True)),
                          ("softplus", L2Decay(form="proximal", cautious=True)),
                          ("adam", HuberDecay(delta=0.2, form="proximal", cautious=True)),
                          ("atan2", HuberDecay(delta=0.2))]:
        h = step_record(decay=decay, lr=3e-2, beta1=0.9, beta2=0.99, eps=1e-8,
                        weight_decay=0.5, update=update, atan2_a=1.1, atan2_b=0.8,
                        softplus_beta=30.0, maximize=update == "softplus")
        gen = torch.Generator().manual_seed(4)
        ps = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
        a = state([], torch.float32, False, True)
        a.update(ps=[p.float() for p in ps], ms=[torch.zeros(p.shape) for p in ps],
                 vs=[torch.zeros(p.shape) for p in ps], steps=[torch.zeros(()) for _ in ps],
                 mus=[p.float().abs().mean().nan_to_num() for p in ps])
        ref = [(p.clone(), torch.zeros_like(p), torch.zeros_like(p), mu.item())
               for p, mu in zip(ps, a["mus"])]
        for t in range(1, 5):
            gs = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in ps]
            triton_adamhd.fused_adamhd_triton(
                a["ps"], [g.float() for g in gs], a["ms"], a["vs"], [], a["steps"], a["mus"],
                decay=decay, amsgrad=False, beta1=h.beta1, beta2=h.beta2, lr=h.lr,
                weight_decay=h.weight_decay, eps=h.eps, maximize=h.maximize,
                update=update_args(h))
            ref = [reference_step(p, g, m, v, t, mu, h) for (p, m, v, mu), g in zip(ref, gs)]
        for got, want in zip(a["ps"] + a["ms"] + a["vs"],
                             [r[0] for r in ref] + [r[1] for r in ref] + [r[2] for r in ref]):
            if got.numel():
                err = ((got.double() - want).abs() / (1e-5 * want.abs() + 1e-6)).max().item()
                worst = max(worst, err)
    return worst


if __name__ == "__main__":
    cases = json.loads(sys.argv[1])
    out = {"results": [run(c) for c in cases], "skipped_step_unchanged": skipped_step(),
           "mixed_dtypes_equal": mixed_dtypes(), "non_finite_guard": non_finite_weight(),
           "options_tolerance_used": options()}
    print("RESULT " + json.dumps(out))
