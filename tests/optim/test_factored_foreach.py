"""The foreach paths of Adafactor, SM3 and SMMF (issue 20): the float64 references of
tests/optim/reference.py, the single-tensor path to rounding (weights and state, mixed step
counts, several groups, maximize, low precision), checkpoints, and the ``foreach=None`` choice."""

from __future__ import annotations

import pytest
import torch

from adamhd import SM3, SMMF, Adafactor
from adamhd.optim.smmf import pack_signs, unpack_signs
from tests.optim import common, reference

NAMES = ["adafactor", "sm3", "smmf"]
CLASSES = {"adafactor": Adafactor, "sm3": SM3, "smmf": SMMF}
KWARGS = {
    "adafactor": dict(lr=0.05, weight_decay=0.1),
    "sm3": dict(lr=0.05, momentum=0.5, weight_decay=0.1),
    "smmf": dict(lr=0.05, weight_decay=0.1),
}
SHAPES = [(5, 7), (3, 4, 6), (9,), (), (0, 3), (1, 1), (2, 8)]
STEPS = 5


@pytest.mark.parametrize("name", NAMES)
def test_foreach_float64_matches_reference(name):
    shapes = [(3, 2, 4), (4, 3), (7,), ()] if name == "sm3" else common.SHAPES
    for shape in shapes:
        grads = common.grads_for(shape, STEPS)
        p0 = torch.randn(shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        p = p0.clone().requires_grad_()
        common.run(CLASSES[name]([p], foreach=True, **KWARGS[name]), [p], [grads])
        want, _ = getattr(reference, name)(p0, grads, **KWARGS[name])
        torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-13, msg=str(shape))


def _train(name, foreach, dtype, maximize=False, steps=STEPS):
    """Two groups; the (9,) tensor has no gradient at step 1, so it runs one step behind."""
    gen = torch.Generator().manual_seed(4)
    params = [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in SHAPES]
    groups = [{"params": params[:4]}, {"params": params[4:], "weight_decay": 0.0, "lr": 0.02}]
    opt = CLASSES[name](groups, foreach=foreach, maximize=maximize, **KWARGS[name])
    for t in range(steps):
        for i, p in enumerate(params):
            p.grad = None if (i == 2 and t == 1) else torch.randn(p.shape, generator=gen).to(dtype)
        opt.step()
    return params, opt


def _close(dtype):
    return {torch.float64: dict(rtol=1e-12, atol=1e-13), torch.float32: dict(rtol=1e-5, atol=1e-6),
            torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}[dtype]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_foreach_equals_single_tensor_path(name, dtype):
    maximize = dtype == torch.float32
    single, opt_s = _train(name, False, dtype, maximize)
    multi, opt_m = _train(name, True, dtype, maximize)
    for a, b in zip(single, multi):
        torch.testing.assert_close(b, a, **_close(dtype), msg=str(a.shape))
    for a, b in zip(single, multi):
        sa, sb = opt_s.state[a], opt_m.state[b]
        assert sa.keys() == sb.keys()
        for key in sa:
            if key == "sign":  # a sign may flip where M is 0 to rounding
                same = unpack_signs(sa[key], a.numel()) == unpack_signs(sb[key], a.numel())
                least = a.numel() if dtype == torch.float64 else 0.95 * a.numel()
                assert same.sum() >= least, (a.shape, same)
                continue
            assert sa[key].dtype == sb[key].dtype, key
            torch.testing.assert_close(sb[key], sa[key], **_close(dtype), msg=key)
    if name != "sm3":  # the tensor without a gradient at step 1 is one step behind
        assert float(opt_m.state[multi[2]]["step"]) == STEPS - 1
        assert float(opt_m.state[multi[0]]["step"]) == STEPS


def test_batches_split_by_elements():
    from adamhd.optim._paths import batches

    sizes = [torch.zeros(n) for n in (0, 5, 20, 3, 3, 0, 30, 1)]
    assert batches(sizes, limit=10) == [[0, 1], [2], [3, 4, 5], [6], [7]]
    assert batches(sizes) == [list(range(8))] and batches([]) == []


@pytest.mark.parametrize("name", NAMES)
def test_foreach_in_small_batches_equals_single(name, monkeypatch):
    import adamhd.optim._paths as paths

    monkeypatch.setattr(paths, "BATCH_ELEMENTS", 20)  # (5, 7) and (3, 4, 6) alone, the rest paired
    single, _ = _train(name, False, torch.float64)
    multi, _ = _train(name, True, torch.float64)
    for a, b in zip(single, multi):
        torch.testing.assert_close(b, a, **_close(torch.float64), msg=str(a.shape))


@pytest.mark.parametrize("name", NAMES)
def test_foreach_checkpoint_round_trip_continues_the_same(name):
    whole, _ = _train(name, True, torch.float32, steps=STEPS)
    params, opt = _train(name, True, torch.float32, steps=3)
    saved = common.snapshot(params, opt)
    fresh = [w.detach().clone().requires_grad_() for w in saved[0]]
    groups = [{"params": fresh[:4]}, {"params": fresh[4:], "weight_decay": 0.0, "lr": 0.02}]
    again = CLASSES[name](groups, foreach=True, **KWARGS[name])
    again.load_state_dict(saved[1])
    common.assert_state_equal(again.state_dict()["state"], opt.state_dict()["state"])
    gen = torch.Generator().manual_seed(4)  # replay the generator to steps 3 and 4
    for s in SHAPES:
        torch.randn(s, generator=gen)
    for t in range(STEPS):
        grads = [torch.randn(p.shape, generator=gen) for i, p in enumerate(fresh)
                 if not (i == 2 and t == 1)]
        if t < 3:
            continue
        for p, g in zip(fresh, grads):
            p.grad = g
        again.step()
    for a, b in zip(whole, fresh):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_pack_signs_is_the_bit_layout():
    flags = torch.rand(29, generator=torch.Generator().manual_seed(1)) < 0.5
    want = [sum(int(flags[8 * i + j]) << j for j in range(8) if 8 * i + j < 29) for i in range(4)]
    assert pack_signs(flags).tolist() == want
    assert torch.equal(unpack_signs(pack_signs(flags), 29), flags)


@pytest.mark.parametrize("name", NAMES)
def test_foreach_none_chooses_as_torch(name):
    p = torch.zeros(3, 4, requires_grad=True)
    opt = CLASSES[name]([p])
    assert opt.param_groups[0]["foreach"] is None
    from torch.optim.optimizer import _default_to_fused_or_foreach

    _, torch_choice = _default_to_fused_or_foreach([p], differentiable=False, use_fused=False)
    assert opt.group_hyper(opt.param_groups[0]).foreach is torch_choice is False  # CPU: the loop
    assert opt.group_hyper({**opt.param_groups[0], "foreach": True}).foreach is True


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_without_foreach_key_loads(name):
    """A state dict saved before ``foreach`` existed: the group gets ``foreach=None``."""
    params, opt = _train(name, False, torch.float32, steps=2)
    state = opt.state_dict()
    for group in state["param_groups"]:
        del group["foreach"]
    again = CLASSES[name]([{"params": params[:4]}, {"params": params[4:]}])
    again.load_state_dict(state)
    assert all(g["foreach"] is None for g in again.param_groups)
    for p in params:
        p.grad = torch.ones_like(p)
    again.step()


def test_smmf_refuses_a_split_other_than_rows(monkeypatch):
    """SMMF's square view needs each shard to be a range of the flattened tensor (FSDP2's
    Shard(0)); a tensor-parallel Shard(1) is refused when the group is added."""
    from torch.distributed.tensor import Shard

    import adamhd.optim.smmf as smmf_module

    p = torch.zeros(4, 6, requires_grad=True)
    p.placements = (Shard(1),)
    monkeypatch.setattr(smmf_module, "is_dtensor", lambda t: t is p)
    with pytest.raises(RuntimeError, match=r"Shard\(0\) on one mesh dimension"):
        SMMF([p])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_smmf_stacked_small_tensors_equal_the_loop(dtype):
    """Small float32 tensors of one square shape run stacked on SMMF's foreach path (float64
    ones per tensor): both equal the loop, signs (9 elements: a padded byte) and factors too."""
    shapes = [(3, 3)] * 5 + [(16,)] * 3 + [(9,), (5, 7)]
    gen = torch.Generator().manual_seed(5)
    p0 = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=dtype) for s in shapes] for _ in range(4)]
    runs = []
    for foreach in (False, True):
        params = [p.clone().requires_grad_() for p in p0]
        opt = SMMF(params, lr=0.05, weight_decay=0.1, foreach=foreach)
        for gs in grads:
            for p, g in zip(params, gs):
                p.grad = g.clone()
            opt.step()
        runs.append((params, opt))
    (single, opt_s), (multi, opt_m) = runs
    for a, b in zip(single, multi):
        torch.testing.assert_close(b, a, **_close(dtype))
        for key, value in opt_s.state[a].items():
            if key == "sign":
                assert torch.equal(unpack_signs(opt_m.state[b][key], a.numel()),
                                   unpack_signs(value, a.numel()))
            else:
                torch.testing.assert_close(opt_m.state[b][key], value, **_close(dtype))
