"""adamhd.state: float statistics keep their dtype across loads (bf16/fp16 resume), and state that
does not fit its parameter is refused with an error naming it, before anything changes."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adamhd import AdamHD
from adamhd.state import StateError
from tests.core.bad_state_probe import BAD
from tests.core.conftest import available_paths, path_kwargs

ROOT = Path(__file__).resolve().parents[2]


def make_params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(24, 16), (16,), (5, 3, 2)]
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in shapes]


def run(ps, opt, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
        opt.step()


def roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("path", ["default", *available_paths()])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("form", ["explicit", "proximal"])
def test_low_precision_save_load_step_is_bit_exact(path, dtype, form):
    """bf16/fp16 weights resume on every path: delta_mu comes back float32 with the saved bits
    (float64 for float64 weights), and the resumed run equals the straight one bit for bit."""
    kw = dict(lr=1e-2, weight_decay=0.2, decay_form=form, eps=1e-3,
              **({} if path == "default" else path_kwargs(path)))
    straight = make_params(dtype)
    opt = AdamHD(straight, **kw)
    run(straight, opt, 4, seed=1)
    run(straight, opt, 3, seed=2)

    first = make_params(dtype)
    opt1 = AdamHD(first, **kw)
    run(first, opt1, 4, seed=1)
    ckpt = roundtrip({"p": [p.detach() for p in first], "opt": opt1.state_dict()})
    resumed = [torch.nn.Parameter(p.clone()) for p in ckpt["p"]]
    opt2 = AdamHD(resumed, **kw)
    opt2.load_state_dict(ckpt["opt"])
    want_mu = torch.float64 if dtype == torch.float64 else torch.float32
    for i, p in enumerate(resumed):
        mu = opt2.state[p]["delta_mu"]
        assert mu.dtype == want_mu and torch.equal(mu, opt1.state[first[i]]["delta_mu"])
        assert opt2.state[p]["exp_avg"].dtype == dtype
    run(resumed, opt2, 3, seed=2)
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)
        for key, value in opt.state[a].items():
            assert value.dtype == opt2.state[b][key].dtype, key
            assert torch.equal(value, opt2.state[b][key]), key


def test_adamw_state_of_bf16_weights_loads_and_steps():
    ps = make_params(torch.bfloat16)
    adamw = torch.optim.AdamW(ps, lr=1e-2)
    run(ps, adamw, 2, seed=1)
    opt = AdamHD(ps, lr=1e-2, foreach=False, fused=False)
    opt.load_state_dict(adamw.state_dict())
    run(ps, opt, 1, seed=2)
    assert all(opt.state[p]["delta_mu"].dtype == torch.float32 for p in ps)


def probe(path: str) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-m", "tests.core.bad_state_probe", path],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, f"probe died ({done.returncode}): {done.stderr[-2000:]}"
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.parametrize("path", ["default", *available_paths()])
def test_bad_state_is_refused_before_anything_changes(path):
    """Smaller, larger, reshaped, non-scalar or integer state, loaded or assigned: a StateError
    naming group, position, key, expected and got; weights and state untouched. Run in a
    subprocess: before this check a too-small exp_avg corrupted the heap of the fused kernels."""
    results = probe(path)
    assert {(r["name"], r["how"]) for r in results} == {
        (name, how) for name in BAD for how in ("load", "assign")
    }
    for r in results:
        where = f"{r['name']} ({r['how']})"
        assert r["error"] == "StateError", where
        key = BAD[r["name"]][0]
        assert "param_groups[0]['params'][0]" in r["message"], where
        assert f"'{key}'" in r["message"], where
        assert ("expected" in r["message"]) or ("missing" in r["message"]), where
        assert r["unchanged"], where


def test_message_names_expected_and_got():
    ps = make_params(torch.float32)
    opt = AdamHD([{"params": ps[:1]}, {"params": ps[1:]}], fused=False)
    run(ps, opt, 1, seed=1)
    sd = opt.state_dict()
    sd["state"][2]["exp_avg"] = torch.zeros(7)
    with pytest.raises(StateError) as info:
        opt.load_state_dict(sd)
    message = str(info.value)
    assert "AdamHD.load_state_dict" in message
    assert "param_groups[1]['params'][1]" in message
    assert "'exp_avg' has shape (7,), expected (5, 3, 2)" in message
    assert isinstance(info.value, ValueError)  # torch's load raises ValueError for mismatches


def test_missing_required_key_is_named():
    ps = make_params(torch.float32)
    opt = AdamHD(ps, fused=False)
    run(ps, opt, 1, seed=1)
    sd = opt.state_dict()
    del sd["state"][1]["exp_avg_sq"]
    with pytest.raises(StateError, match=r"params'\]\[1\].*'exp_avg_sq' is missing"):
        opt.load_state_dict(sd)


def test_step_checks_dtype_and_device_strictly():
    """State set by other means (not through load_state_dict) is checked at the next step."""
    ps = make_params(torch.float32)
    opt = AdamHD(ps, fused=False)
    run(ps, opt, 1, seed=1)
    opt.state[ps[1]]["delta_mu"] = opt.state[ps[1]]["delta_mu"].to(torch.bfloat16)
    opt._state_checked = False  # as after construction or a load
    bf16_mu = "'delta_mu' has dtype torch.bfloat16, expected torch.float32"
    with pytest.raises(StateError, match=bf16_mu):
        opt.step()
    opt.state[ps[1]]["delta_mu"] = opt.state[ps[1]]["delta_mu"].float()
    opt.state[ps[0]]["exp_avg"] = opt.state[ps[0]]["exp_avg"].to("meta")
    with pytest.raises(StateError, match="'exp_avg' is on meta, expected cpu"):
        opt.step()


def test_statistic_saved_in_low_precision_is_widened():
    """A checkpoint written by an older version (delta_mu already cast to bf16) loads widened."""
    ps = make_params(torch.bfloat16)
    opt = AdamHD(ps, fused=False)
    run(ps, opt, 1, seed=1)
    sd = opt.state_dict()
    for s in sd["state"].values():
        s["delta_mu"] = s["delta_mu"].to(torch.bfloat16)
    opt.load_state_dict(sd)
    for i, p in enumerate(ps):
        assert opt.state[p]["delta_mu"].dtype == torch.float32
        assert torch.equal(opt.state[p]["delta_mu"], sd["state"][i]["delta_mu"].float())
    run(ps, opt, 1, seed=2)


def test_pickled_optimizer_is_checked_again():
    ps = make_params(torch.float32)
    opt = AdamHD(ps, fused=False)
    run(ps, opt, 1, seed=1)
    state = opt.__getstate__()
    state["state"][ps[0]]["exp_avg"] = torch.zeros(3)
    fresh = AdamHD.__new__(AdamHD)
    fresh.__setstate__(state)
    with pytest.raises(StateError, match="'exp_avg' has shape"):
        fresh.step()
