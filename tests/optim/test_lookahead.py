"""Lookahead: against a float64 reference, bit-exact resume, schedulers, GradScaler, peers."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from adamhd import AdamHD, Lookahead, transforms


def make_model(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).to(dtype)


def batch(seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(5, 4, generator=g).to(dtype), torch.randn(5, 2, generator=g).to(dtype)


def backward(model, seed, dtype=torch.float32, scaler=None):
    x, y = batch(seed, dtype)
    loss = nn.functional.mse_loss(model(x), y)
    (scaler.scale(loss) if scaler is not None else loss).backward()


def train(model, opt, seeds, dtype=torch.float32):
    for seed in seeds:
        backward(model, seed, dtype)
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("k, alpha", [(1, 0.5), (3, 0.5), (2, 0.8), (4, 1.0)])
def test_matches_float64_reference_with_sgd(k, alpha):
    """Reference: plain SGD on float64 copies; every k steps slow += alpha*(fast - slow),
    fast = slow, written out in Python floats."""
    model = make_model(torch.float64)
    opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1), k=k, alpha=alpha)
    ref_model = copy.deepcopy(model)
    slow = [p.detach().clone() for p in ref_model.parameters()]
    for step in range(1, 10):
        backward(ref_model, step, torch.float64)
        with torch.no_grad():
            for p in ref_model.parameters():
                p -= 0.1 * p.grad
                p.grad = None
            if step % k == 0:
                for s, p in zip(slow, ref_model.parameters()):
                    s.copy_(torch.tensor([a + alpha * (b - a) for a, b in
                                          zip(s.reshape(-1).tolist(), p.reshape(-1).tolist())],
                                         dtype=torch.float64).view_as(s))
                    p.copy_(s)
        train(model, opt, [step], torch.float64)
        for a, b in zip(model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert opt.param_groups[0]["lookahead_step"] == 9
    for s, p in zip(slow, model.parameters()):
        torch.testing.assert_close(opt.state[p]["lookahead_slow"], s, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("inner", ["adamhd", "adamw"])
def test_inner_optimizer_runs_unchanged_between_syncs(inner):
    """Between syncs the weights and the inner state are exactly the inner optimizer's own."""
    make = {"adamhd": lambda ps: AdamHD(ps, lr=0.05, weight_decay=0.1, fused=False),
            "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.05)}[inner]
    model, ref_model = make_model(), make_model()
    opt, ref = Lookahead(make(model.parameters()), k=5), make(ref_model.parameters())
    train(model, opt, range(4))
    train(ref_model, ref, range(4))
    for a, b in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(a, b)
    for key, value in ref.state_dict()["state"][0].items():
        assert torch.equal(opt.optimizer.state_dict()["state"][0][key], value)


def resumable_run(make_opt, split, total, via_bytes=False):
    model = make_model()
    opt = make_opt(model)
    train(model, opt, range(split))
    model_state, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    if via_bytes:
        buf = io.BytesIO()
        torch.save(opt_state, buf)
        opt_state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    train(model, opt, range(split, total))
    resumed_model = make_model()
    resumed_model.load_state_dict(model_state)
    resumed = make_opt(resumed_model)
    resumed.load_state_dict(opt_state)
    train(resumed_model, resumed, range(split, total))
    return (model, opt), (resumed_model, resumed)


def assert_same_state(a: Lookahead, b: Lookahead):
    sa, sb = a.state_dict(), b.state_dict()
    assert [g["lookahead_step"] for g in sa["param_groups"]] == [
        g["lookahead_step"] for g in sb["param_groups"]]
    assert sa["state"].keys() == sb["state"].keys()
    for i in sa["state"]:
        assert sa["state"][i].keys() == sb["state"][i].keys()
        for key, value in sa["state"][i].items():
            assert torch.equal(value, sb["state"][i][key]), (i, key)


@pytest.mark.parametrize("split", [2, 3, 4])
@pytest.mark.parametrize("via_bytes", [False, True])
def test_resume_is_bit_exact(split, via_bytes):
    def make_opt(model):
        return Lookahead(
            AdamHD(model.parameters(), lr=0.05, weight_decay=0.1, fused=False), k=3, alpha=0.5
        )

    (model, opt), (resumed_model, resumed) = resumable_run(make_opt, split, 8, via_bytes)
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
    assert_same_state(opt, resumed)


def test_state_dict_holds_slow_weights_in_param_dtype_and_count():
    model = make_model(torch.bfloat16)
    opt = Lookahead(torch.optim.AdamW(model.parameters(), lr=0.05), k=2)
    train(model, opt, range(3), torch.bfloat16)
    state = opt.state_dict()
    assert state["param_groups"][0]["lookahead_step"] == 3
    for i, p in enumerate(model.parameters()):
        slow = state["state"][i]["lookahead_slow"]
        assert slow.dtype == torch.bfloat16 and slow.shape == p.shape
    fresh = Lookahead(torch.optim.AdamW(make_model(torch.bfloat16).parameters(), lr=0.05), k=2)
    fresh.load_state_dict(copy.deepcopy(state))
    for p in fresh.param_groups[0]["params"]:
        assert fresh.state[p]["lookahead_slow"].dtype == torch.bfloat16


def test_bad_state_dicts_raise_before_any_change():
    model = make_model()
    opt = Lookahead(torch.optim.AdamW(model.parameters(), lr=0.05), k=2)
    train(model, opt, range(3))
    before = copy.deepcopy(opt.state_dict())
    plain = torch.optim.AdamW(make_model().parameters(), lr=0.05)
    train(make_model(), plain, range(1))
    with pytest.raises(ValueError, match="saved by Lookahead"):
        opt.load_state_dict(plain.state_dict())
    bad = copy.deepcopy(before)
    bad["state"][0]["lookahead_slow"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(bad)
    assert_same_state_dicts(opt.state_dict(), before)


def assert_same_state_dicts(a, b):
    for i in b["state"]:
        for key, value in b["state"][i].items():
            assert torch.equal(a["state"][i][key], value)
    assert a["param_groups"] == b["param_groups"]


def test_is_an_optimizer_for_schedulers_and_shares_groups():
    model = make_model()
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = Lookahead(inner, k=2)
    assert isinstance(opt, torch.optim.Optimizer) and opt.param_groups is inner.param_groups
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    train(model, opt, range(2))
    sched.step()
    assert inner.param_groups[0]["lr"] == pytest.approx(0.05)
    extra = nn.Parameter(torch.randn(3))
    opt.add_param_group({"params": [extra]})
    assert len(inner.param_groups) == 2 and opt.param_groups[1]["lookahead_step"] == 0
    assert extra not in opt.state  # slow weights are created at the next step
    before = extra.detach().clone()
    backward(model, 0)
    opt.step()
    assert torch.equal(opt.state[extra]["lookahead_slow"], before)
    backward(model, 0)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_parameters_without_gradients_are_untouched():
    model = make_model()
    frozen = nn.Parameter(torch.randn(3, 3))
    before = frozen.detach().clone()
    opt = Lookahead(torch.optim.AdamW([*model.parameters(), frozen], lr=0.05), k=2)
    train(model, opt, range(5))
    assert torch.equal(frozen.detach(), before) and frozen.grad is None


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(k=0), "k must be"), (dict(k=2.0), "k must be"), (dict(k=True), "k must be"),
     (dict(alpha=0.0), "alpha"), (dict(alpha=1.5), "alpha"), (dict(alpha=float("nan")), "alpha")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Lookahead(torch.optim.SGD(make_model().parameters(), lr=0.1), **kwargs)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        Lookahead(make_model())


def test_grad_scaler_skipped_step_changes_nothing():
    model = make_model()
    opt = Lookahead(torch.optim.AdamW(model.parameters(), lr=0.05), k=2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    backward(model, 0, scaler=scaler)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad()
    before = copy.deepcopy(opt.state_dict())
    weights = [p.detach().clone() for p in model.parameters()]
    backward(model, 1, scaler=scaler)
    model[0].weight.grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters()))
    assert_same_state_dicts(opt.state_dict(), before)
    assert opt.param_groups[0]["lookahead_step"] == 1


def test_closure_runs_with_gradients_enabled():
    model = make_model()
    opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1), k=1)

    def closure():
        opt.zero_grad()
        x, y = batch(0)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    assert opt.step(closure) is not None


def test_transforms_attach_to_lookahead():
    model, ref_model = make_model(), make_model()
    opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1), k=2)
    ref = Lookahead(torch.optim.SGD(ref_model.parameters(), lr=0.1), k=2)
    transforms.attach(opt, "normalize")
    for seed in range(3):
        backward(model, seed)
        backward(ref_model, seed)
        transforms.normalize(ref_model.parameters())
        opt.step()
        ref.step()
        opt.zero_grad()
        ref.zero_grad()
    for a, b in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(a, b)


def test_equals_pytorch_optimizer_lookahead():
    po = pytest.importorskip("pytorch_optimizer")
    model, ref_model = make_model(), make_model()
    ours = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1), k=3, alpha=0.5)
    theirs = po.Lookahead(torch.optim.SGD(ref_model.parameters(), lr=0.1), k=3, alpha=0.5)
    train(model, ours, range(7))
    train(ref_model, theirs, range(7))
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_deepcopy_keeps_the_wrapper_and_trains_the_same():
    model = make_model()
    opt = Lookahead(torch.optim.AdamW(model.parameters(), lr=0.05), k=2, alpha=0.8)
    train(model, opt, range(3))
    model2, opt2 = copy.deepcopy((model, opt))
    assert (opt2.k, opt2.alpha) == (2, 0.8) and opt2.param_groups is opt2.optimizer.param_groups
    assert opt2.param_groups[0]["params"][0] is next(model2.parameters())
    train(model, opt, range(3, 6))
    train(model2, opt2, range(3, 6))
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert_same_state(opt, opt2)


def test_state_is_empty_until_the_first_step_and_slow_starts_there():
    """torch.distributed.checkpoint initialises a fresh optimizer only when its state is empty;
    the slow weights are the weights at the first step (e.g. after loading a model checkpoint)."""
    model = make_model()
    opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1), k=2)
    assert not opt.state
    with torch.no_grad():
        model[0].weight.add_(1.0)
    start = [p.detach().clone() for p in model.parameters()]
    train(model, opt, range(1))
    for p, s in zip(model.parameters(), start):
        assert torch.equal(opt.state[p]["lookahead_slow"], s)


def test_state_dict_of_another_size_is_refused():
    opt = Lookahead(torch.optim.SGD(make_model().parameters(), lr=0.1))
    small = Lookahead(torch.optim.SGD(make_model()[0].parameters(), lr=0.1))
    with pytest.raises(ValueError, match="has 2 parameters, this optimizer 4"):
        opt.load_state_dict(small.state_dict())


def test_a_state_dict_not_laid_out_as_torch_s_is_refused_before_anything_changes():
    from adamhd.state import StateError

    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(10))
    opt = Lookahead(AdamHD([p], lr=0.1), k=2)
    for _ in range(3):
        p.grad = torch.randn(10)
        opt.step()
    before = copy.deepcopy(opt.state_dict())
    spoiled = [([], "got a list"), ({**before, "param_groups": "x"}, "'param_groups'] is a str"),
               ({**before, "state": None}, "['state'] is a NoneType"),
               ({**before, "state": {0: None}}, "parameter 0 has no 'lookahead_slow'")]
    for state_dict, words in spoiled:
        with pytest.raises(ValueError, match="Lookahead.load_state_dict: ") as info:
            opt.load_state_dict(state_dict)
        assert words in str(info.value) and (words == spoiled[-1][1] or
                                             isinstance(info.value, StateError))
        after = opt.state_dict()
        assert after["param_groups"] == before["param_groups"]
        for key, value in before["state"][0].items():
            assert torch.equal(after["state"][0][key], value), key
