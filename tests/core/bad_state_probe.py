"""Run bad-state cases for one path in a fresh process; print one JSON line per case.

``python -m tests.core.bad_state_probe PATH``. A crash (heap corruption in a fused kernel fed a
too-small state) kills only this process: the calling test sees the exit status and fails.
"""

from __future__ import annotations

import json
import sys

import torch

from adamhd import AdamHD

PATHS = {
    "default": {},
    "single": dict(foreach=False, fused=False),
    "foreach": dict(foreach=True, fused=False),
    "fused": dict(fused=True),
}

# (key, how the bad tensor is made from the good one)
BAD = {
    "smaller": ("exp_avg", lambda t: t.flatten()[: t.numel() // 2].clone()),
    "larger": ("exp_avg_sq", lambda t: torch.cat([t.flatten(), t.flatten()])),
    "reshaped": ("exp_avg", lambda t: t.reshape(t.shape[1], t.shape[0]).clone()),
    "amsgrad-smaller": ("max_exp_avg_sq", lambda t: t[:1].clone()),
    "mu-not-scalar": ("delta_mu", lambda t: t.reshape(1).repeat(3)),
    "step-not-scalar": ("step", lambda t: t.reshape(1).repeat(2)),
    "int-moment": ("exp_avg", lambda t: t.to(torch.int32)),
}


def make(path: str):
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(64, 48)), torch.nn.Parameter(torch.randn(48))]
    opt = AdamHD(ps, lr=1e-2, weight_decay=0.1, amsgrad=True, **PATHS[path])
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    return ps, opt


def snapshot(ps, opt):
    return [p.detach().clone() for p in ps], {
        (i, k): v.clone() for i, p in enumerate(ps) for k, v in opt.state[p].items()
    }


def unchanged(ps, opt, before) -> bool:
    weights, state = before
    now_weights, now_state = snapshot(ps, opt)
    return all(torch.equal(a, b) for a, b in zip(weights, now_weights)) and state.keys() == (
        now_state.keys()
    ) and all(torch.equal(state[k], now_state[k]) for k in state)


def case(path: str, name: str, how: str) -> dict:
    key, bad = BAD[name]
    ps, opt = make(path)
    for p in ps:
        p.grad = torch.randn_like(p)
    before = snapshot(ps, opt)
    try:
        if how == "load":
            sd = opt.state_dict()
            sd["state"][0] = {**sd["state"][0], key: bad(sd["state"][0][key])}
            opt.load_state_dict(sd)
        else:  # state set by other means in a new optimizer, then its first step
            trained = opt
            opt = AdamHD(ps, lr=1e-2, weight_decay=0.1, amsgrad=True, **PATHS[path])
            for p in ps:
                opt.state[p] = {k: v.clone() for k, v in trained.state[p].items()}
            opt.state[ps[0]][key] = bad(opt.state[ps[0]][key])
            before = snapshot(ps, opt)
        opt.step()
        return dict(name=name, how=how, error=None, unchanged=unchanged(ps, opt, before))
    except Exception as exc:  # noqa: BLE001 - the test inspects type and message
        return dict(name=name, how=how, error=type(exc).__name__, message=str(exc),
                    unchanged=unchanged(ps, opt, before))


def main() -> None:
    path = sys.argv[1]
    for name in BAD:
        for how in ("load", "assign"):
            print(json.dumps(case(path, name, how)), flush=True)


if __name__ == "__main__":
    main()
