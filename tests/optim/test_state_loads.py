"""Every optimizer of the package refuses a corrupt checkpoint before anything changes.

A state tensor of the wrong shape, a missing required key, an integer tensor where a float one
belongs (and the reverse for SMMF's packed signs), a non-tensor: ``StateError`` naming the
optimizer, ``param_groups[0]['params'][1]``, the key and what was expected; lr, weights and every
state tensor as before. State that is valid but lacks an optional key still loads and resumes.
The keys below are written out by hand from each optimizer's documented state (not read from
the package's specs), so a spec that forgets a key fails here.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

import adamhd
from adamhd.decay.wrapper import with_decoupled_decay
from adamhd.state import StateError
from tests.optim import common


def wrapped(base, **kw):
    return lambda ps: with_decoupled_decay(base)(ps, **kw)


# name -> (factory, key to corrupt (shape, dtype, non-tensor), a required key or None, optional
# keys a valid checkpoint may lack); all keys are those of the 1-D parameter (position 1)
CASES = {
    "NSGDA": (lambda ps: adamhd.NSGDA(ps, lr=0.05, momentum=0.8, weight_decay=0.1),
              "momentum_buffer", "step", ("delta_mu",)),
    "SGDW": (lambda ps: adamhd.SGDW(ps, lr=0.05, weight_decay=0.1, decay="huber"),
             "momentum_buffer", None, ("momentum_buffer", "delta_mu")),
    "MomentumSGD": (lambda ps: adamhd.MomentumSGD(ps, lr=0.05),
                    "momentum_buffer", None, ("momentum_buffer",)),
    "SM3": (lambda ps: adamhd.SM3(ps, lr=0.05, momentum=0.5, weight_decay=0.1),
            "accumulator", "accumulator", ("momentum_buffer",)),
    "SMMF": (lambda ps: adamhd.SMMF(ps, lr=0.05, weight_decay=0.1),
             "col_v", "sign", ("delta_mu",)),
    "AdaMomentum": (lambda ps: adamhd.AdaMomentum(ps, lr=0.05, weight_decay=0.1),
                    "exp_avg", "exp_avg_sq", ("delta_mu",)),
    "AdaptiveMemorySGD": (lambda ps: adamhd.AdaptiveMemorySGD(ps, lr=0.05, weight_decay=0.1),
                          "direction", None, ("direction",)),
    "Adafactor": (lambda ps: adamhd.Adafactor(ps, lr=0.05, weight_decay=0.1),
                  "exp_avg_sq", "step", ("delta_mu",)),
    "AdafactorHD": (lambda ps: adamhd.AdafactorHD(ps, lr=0.05), "variance", "variance",
                    ("delta_mu",)),
    "FCAdam": (lambda ps: adamhd.FCAdam(ps, lr=0.05, history=3, drop=False, weight_decay=0.1),
               "grad_history", "exp_avg", ()),
    "NAdamHD": (lambda ps: adamhd.NAdamHD(ps, lr=0.05), "exp_avg", "mu_product", ("delta_mu",)),
    "RAdamHD": (lambda ps: adamhd.RAdamHD(ps, lr=0.05), "exp_avg_sq", "exp_avg", ("delta_mu",)),
    "AdaLo": (lambda ps: adamhd.AdaLo(ps, lr=0.5, weight_decay=0.1), "exp_avg", "loss_ema", ()),
    "Amos": (lambda ps: adamhd.Amos(ps, lr=0.05, weight_decay=0.01), "amos_v", "amos_b", ()),
    "MuonHD": (lambda ps: adamhd.MuonHD(ps, lr=0.05), "momentum_buffer", "momentum_buffer",
               ("delta_mu",)),
    "Adam+decay": (wrapped(torch.optim.Adam, lr=0.05), "exp_avg_sq", "exp_avg", ("delta_mu",)),
    "AdamW+decay(amsgrad)": (wrapped(torch.optim.AdamW, lr=0.05, amsgrad=True),
                             "max_exp_avg_sq", "max_exp_avg_sq", ("delta_mu",)),
    "SGD+decay": (wrapped(torch.optim.SGD, lr=0.05, momentum=0.9), "momentum_buffer", None,
                  ("momentum_buffer", "delta_mu")),
    "Adamax+decay": (wrapped(torch.optim.Adamax, lr=0.05), "exp_inf", "exp_inf", ()),
    "Adagrad+decay": (wrapped(torch.optim.Adagrad, lr=0.05), "sum", "sum", ()),
    "RMSprop+decay": (wrapped(torch.optim.RMSprop, lr=0.01, momentum=0.9, centered=True),
                      "grad_avg", "momentum_buffer", ()),
    "Adadelta+decay": (wrapped(torch.optim.Adadelta), "acc_delta", "square_avg", ()),
    "Rprop+decay": (wrapped(torch.optim.Rprop, lr=0.01), "step_size", "prev", ()),
    "ASGD+decay": (wrapped(torch.optim.ASGD, lr=0.01), "ax", "eta", ()),
    "Adam+cpr": (wrapped(torch.optim.Adam, lr=0.05, decay="cpr"), "exp_avg", "exp_avg_sq",
                 ("cpr_lambda",)),
    "AdaLo+decay": (wrapped(adamhd.AdaLo, lr=0.5), "exp_avg", "loss_ema", ("delta_mu",)),
}
NAMES = list(CASES)
OTHER_BASES = {}  # name -> factory, for the tests of a base the wrapper does not know


def factory(name):
    return CASES[name][0] if name in CASES else OTHER_BASES[name]


def make_params(name, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    shapes = [(8, 6), (6, 4)] if name == "MuonHD" else [(8, 6), (6,)]
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in shapes]


def run(name, opt, params, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for t in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
        if "AdaLo" in name:
            opt.step(loss=torch.tensor(0.5 + 1.0 / (t + 1)))
        else:
            opt.step()


def trained(name, steps=2):
    params = make_params(name)
    opt = factory(name)(params)
    run(name, opt, params, steps, seed=1)
    return params, opt


def assert_same(a, b):
    """Two state_dicts (or param lists) equal: every tensor bit for bit, every other value."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b or (a != a and b != b)


def refused(name, edit):
    """Load a checkpoint with lr=0.125 and ``edit`` applied to param 1's state: the StateError's
    message, after checking that nothing changed."""
    params, opt = trained(name)
    before = copy.deepcopy(opt.state_dict())
    weights = [p.detach().clone() for p in params]
    sd = copy.deepcopy(opt.state_dict())
    sd["param_groups"][0]["lr"] = 0.125
    edit(sd["state"][1])
    with pytest.raises(StateError) as info:
        opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] != 0.125
    assert_same(opt.state_dict(), before)
    assert_same([p.detach() for p in params], weights)
    message = str(info.value)
    assert f"{type(opt).__name__}.load_state_dict" in message
    assert "param_groups[0]['params'][1]" in message
    return message


@pytest.mark.parametrize("name", NAMES)
def test_wrong_shape_is_refused_before_anything_changes(name):
    key = CASES[name][1]

    def edit(state):
        state[key] = torch.zeros(99)

    message = refused(name, edit)
    assert f"'{key}' has shape (99,), expected" in message


@pytest.mark.parametrize("name", [n for n in NAMES if CASES[n][2] is not None])
def test_missing_required_key_is_refused(name):
    key = CASES[name][2]
    message = refused(name, lambda state: state.pop(key))
    assert f"'{key}' is missing" in message


@pytest.mark.parametrize("name", NAMES)
def test_integer_state_where_floats_belong_is_refused(name):
    key = CASES[name][1]

    def edit(state):
        state[key] = torch.zeros(state[key].shape, dtype=torch.int32)

    message = refused(name, edit)
    assert f"'{key}' has dtype torch.int32, expected" in message


def test_float_signs_of_smmf_are_refused():
    """SMMF's packed signs are uint8 codes, which torch's load does not cast."""
    def edit(state):
        state["sign"] = state["sign"].float()

    message = refused("SMMF", edit)
    assert "'sign' has dtype torch.float32, expected torch.uint8" in message


@pytest.mark.parametrize("name", NAMES)
def test_non_tensor_state_is_refused(name):
    key = CASES[name][1]
    kind = []

    def edit(state):
        state[key] = state[key].tolist()  # a list, or a float for 0-dim state
        kind.append(type(state[key]).__name__)

    message = refused(name, edit)
    assert f"'{key}' is a {kind[0]}, expected a Tensor" in message


def roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def resumed_equals_straight(name, edit=lambda sd: None, dtype=torch.float32):
    straight = make_params(name, dtype=dtype)
    opt = factory(name)(straight)
    run(name, opt, straight, 3, seed=1)
    run(name, opt, straight, 3, seed=2)

    first = make_params(name, dtype=dtype)
    opt1 = factory(name)(first)
    run(name, opt1, first, 3, seed=1)
    ckpt = roundtrip({"p": [p.detach() for p in first], "opt": opt1.state_dict()})
    edit(ckpt["opt"])
    resumed = [torch.nn.Parameter(p.clone()) for p in ckpt["p"]]
    opt2 = factory(name)(resumed)
    opt2.load_state_dict(ckpt["opt"])
    run(name, opt2, resumed, 3, seed=2)
    return straight, opt, resumed, opt2


# tests/optim/test_common.py resumes the optimizers of tests.optim.common.CASES (also bf16)
RESUMED_ELSEWHERE = {cls.__name__ for cls, _ in common.CASES.values()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", [n for n in NAMES if n not in RESUMED_ELSEWHERE])
def test_valid_checkpoint_resumes_bit_for_bit(name, dtype):
    """Loaded and then checked strictly at the first step (dtype, device): no false refusal,
    also for bf16 weights (float32 statistics such as NAdam's ``mu_product``, ``delta_mu``)."""
    straight, opt, resumed, opt2 = resumed_equals_straight(name, dtype=dtype)
    assert_same([p.detach() for p in resumed], [p.detach() for p in straight])
    assert_same(opt2.state_dict(), opt.state_dict())


@pytest.mark.parametrize("name", [n for n in NAMES if CASES[n][3]])
def test_optional_keys_may_be_missing(name):
    """A checkpoint without the keys a step makes when missing (a buffer, delta_mu) loads: the
    check rejects no valid checkpoint. The resumed run differs (a fresh buffer), so only that it
    loads and steps is asserted, and that the keys are made again."""
    optional = CASES[name][3]

    def edit(sd):
        for state in sd["state"].values():
            for key in optional:
                state.pop(key, None)

    straight, opt, resumed, opt2 = resumed_equals_straight(name, edit)
    for key in optional:
        assert (key in opt2.state[resumed[1]]) == (key in opt.state[straight[1]]), key


@pytest.mark.parametrize("name", NAMES)
def test_state_assigned_by_hand_is_refused_at_the_next_step(name):
    """State set after a load by other means (assigned) is checked strictly at the first step
    after the load, before any weight or state changes."""
    params, opt = trained(name)
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    key = CASES[name][1]
    opt.state[params[1]][key] = torch.zeros(99)
    before = copy.deepcopy(opt.state_dict())
    weights = [p.detach().clone() for p in params]
    with pytest.raises(StateError, match=rf"step: state of param_groups\[0\]\['params'\]\[1\].*"
                                         rf"'{key}' has shape \(99,\)"):
        run(name, opt, params, 1, seed=3)
    assert_same(opt.state_dict(), before)
    assert_same([p.detach() for p in params], weights)


@pytest.mark.parametrize("name", ["NSGDA", "SMMF", "AdaMomentum", "Adafactor", "FCAdam", "Amos"])
def test_step_saved_as_a_number_resumes_bit_for_bit(name):
    """A checkpoint whose ``step`` is a Python number (as torch's own optimizers accept) loads
    and resumes as the tensor ``step`` would (before: NSGDA, AdaMomentum, FCAdam and Amos raised
    a bare TypeError/AttributeError at the next step)."""
    def edit(sd):
        for state in sd["state"].values():
            state["step"] = float(state["step"])

    straight, opt, resumed, opt2 = resumed_equals_straight(name, edit)
    assert_same([p.detach() for p in resumed], [p.detach() for p in straight])
    assert_same(opt2.state_dict(), opt.state_dict())


class FlatMomentum(torch.optim.Optimizer):
    """A third-party base whose state the wrapper does not know: a flat buffer (numel of the
    parameter, another shape) and a counter."""

    def __init__(self, params, lr=0.05):
        super().__init__(params, dict(lr=lr, weight_decay=0.0))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state["flat"] = torch.zeros(p.numel(), dtype=p.dtype)
                    state["count"] = torch.zeros(())
                state["flat"].mul_(0.9).add_(p.grad.reshape(-1))
                state["count"] += 1
                p.sub_(state["flat"].view_as(p), alpha=group["lr"])


def test_unknown_base_keeps_its_state_and_checks_the_wrapper_keys():
    """A valid checkpoint of a base the wrapper does not know loads (its flat buffer is not
    held to the parameter's shape) and resumes bit for bit; ``delta_mu`` is still checked."""
    straight, opt, resumed, opt2 = resumed_equals_straight("FlatMomentum+decay")
    assert_same([p.detach() for p in resumed], [p.detach() for p in straight])
    assert_same(opt2.state_dict(), opt.state_dict())

    def edit(state):
        state["delta_mu"] = torch.zeros(3)

    message = refused("FlatMomentum+decay", edit)
    assert "'delta_mu' has shape (3,), expected ()" in message


OTHER_BASES["FlatMomentum+decay"] = wrapped(FlatMomentum)


def test_groups_with_different_options_are_checked_each_by_its_own():
    """FCAdam's ``grad_history`` holds ``history`` gradients of the loaded group: two groups of
    same-shaped parameters with different ``history`` each get their own expectation."""
    g = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(6, generator=g)) for _ in range(4)]
    opt = adamhd.FCAdam([{"params": ps[:2], "history": 2}, {"params": ps[2:], "history": 3}],
                        lr=0.05, drop=False)
    for p in ps:
        p.grad = torch.randn(6, generator=g)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    opt.load_state_dict(copy.deepcopy(sd))  # valid: loads
    sd["state"][3]["grad_history"] = torch.zeros(2, 6)
    with pytest.raises(StateError, match=r"\[1\]\['params'\]\[1\].*'grad_history' has shape "
                                         r"\(2, 6\), expected \(3, 6\)"):
        opt.load_state_dict(sd)


def test_dtensor_state_is_checked_by_its_global_shape():
    """DTensor parameters (one gloo rank, ``Shard(0)``): the own DTensor state loads and steps
    (the spec is derived on a meta DTensor stand-in), a state tensor of the wrong global shape
    is refused naming the key and the shape expected, nothing changed. In a subprocess: it
    initialises a process group."""
    import json
    import os
    import subprocess
    import sys

    import torch.distributed as dist

    from tests.distributed.conftest import REPO, free_port

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
    done = subprocess.run([sys.executable, "-m", "tests.optim.dtensor_load_probe",
                           str(free_port())], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["name"] for r in rows] == ["NSGDA", "SM3", "Adafactor", "SMMF", "Amos",
                                         "AdamW+decay"]
    expected = {"momentum_buffer": "(8, 6)", "accumulator_1": "(6,)", "exp_avg_sq_col": "(6,)",
                "col_v": "(6,)", "amos_v": "()", "exp_avg": "(8, 6)"}
    for r in rows:
        assert r["message"] is not None, r["name"]
        assert "param_groups[0]['params'][0]" in r["message"], r["name"]
        assert f"'{r['key']}' has shape (99,), expected {expected[r['key']]}" in r["message"]
        assert r["unchanged"], r["name"]
    # the factored and moment state of these optimizers are DTensors (not SMMF's, Amos's)
    assert {r["name"] for r in rows if r["dtensor"]} == {"NSGDA", "SM3", "Adafactor",
                                                         "AdamW+decay"}


def _spoiled_layouts(sd):
    group = dict(sd["param_groups"][0])
    return [
        ([], "expected a dict with 'state' and 'param_groups', got a list"),
        ({**sd, "param_groups": "x"}, "state_dict['param_groups'] is a str, expected a list"),
        ({**sd, "state": None}, "state_dict['state'] is a NoneType, expected a dict"),
        ({**sd, "param_groups": [{k: v for k, v in group.items() if k != "params"}]},
         "state_dict['param_groups'][0] is not a dict with a 'params' list"),
        ({**sd, "state": {**sd["state"], 1: None}},
         "param_groups[0]['params'][1] (a torch.float32 parameter of shape (6,) on cpu): the "
         "state is a NoneType, expected a dict"),
    ]


@pytest.mark.parametrize("name", ["AdamHD", "NSGDA", "Adam"])
def test_a_state_dict_not_laid_out_as_torch_s_is_refused_before_anything_changes(name):
    """A truncated or hand-made state_dict raised a TypeError or AttributeError from inside
    torch's load (a None state after it had replaced the groups): now a StateError first."""
    make = {"AdamHD": adamhd.AdamHD, "NSGDA": adamhd.NSGDA,
            "Adam": lambda ps: wrapped(torch.optim.Adam)(ps)}[name]
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(8, 6)), torch.nn.Parameter(torch.randn(6))]
    opt = make(params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    before = copy.deepcopy(opt.state_dict())
    for spoiled, words in _spoiled_layouts(copy.deepcopy(before)):
        with pytest.raises(StateError, match=r"\.load_state_dict: ") as info:
            opt.load_state_dict(spoiled)
        assert words in str(info.value)
        assert_same(opt.state_dict(), before)
