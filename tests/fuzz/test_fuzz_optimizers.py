"""Fuzzing every exported optimizer and its options (hypothesis, derandomized: CI replays the
same examples; bounded by ``max_examples``).

Each example draws an optimizer's options, 1-3 tensors (0-dim, 0-size, non-contiguous; fp32,
bf16, fp16; one dtype or mixed), one or two param groups (the second with options of its own), a
few steps with gradients (some absent; maybe one tensor's sparse), maybe one NaN/inf gradient
element, and a step to save/load at.
Invariants:

* construction and steps raise nothing but a clear error (``ValueError``/``TypeError``/
  ``RuntimeError`` from a ``raise`` statement, i.e. a check, not a failing tensor op);
* a step that raises changes nothing (weights and ``state_dict()``);
* a run saved and loaded (``torch.save``/``load_state_dict`` into a fresh optimizer) at a step
  equals the uninterrupted run bit for bit, weights and state;
* a non-finite gradient element never makes another tensor's weights or state non-finite (those
  that are finite in the same run without it).

CI runs each optimizer's ``Entry.examples`` (tests/fuzz/optimizers.py); a deeper local run:
``ADAMHD_FUZZ_EXAMPLES=300 pytest tests/fuzz``.
"""

from __future__ import annotations

import copy
import io
import math
import os
import traceback
from dataclasses import dataclass, replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.optimizers import COVERS, ENTRIES, Entry, exported_optimizer_classes

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True)
SHAPES = [(), (0,), (3,), (4, 5), (2, 3, 4), (3, 0), (6, 2)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CLEAR = (ValueError, TypeError, RuntimeError, NotImplementedError)


@dataclass
class Problem:
    options: dict
    shapes: list[tuple[int, ...]]
    transposed: list[bool]
    dtypes: list[torch.dtype]  # per tensor (usually all one)
    split: int  # tensors [split:] form a second group (split == len: one group)
    group2: dict
    steps: int
    absent: list[tuple[int, int]]  # (step, tensor) without a gradient
    poison: tuple[int, int, float] | None  # (step, tensor, value) in the tensor's first element
    sparse: int | None  # a tensor whose gradients are sparse tensors (as nn.Embedding's)
    save_at: int


@st.composite
def problems(draw, entry: Entry) -> Problem:
    options = draw(st.fixed_dictionaries({}, optional=entry.options))
    shapes_ok = [s for s in SHAPES if (entry.ndim is None or len(s) in entry.ndim)
                 and (entry.empty or math.prod(s) > 0)]
    shapes = draw(st.lists(st.sampled_from(shapes_ok), min_size=1, max_size=3))
    transposed = [draw(st.booleans()) and len(s) >= 2 for s in shapes]
    n = len(shapes)
    split = draw(st.integers(1, n))
    group_keys = {k: entry.options[k] for k in entry.group if k in entry.options}
    group2 = draw(st.fixed_dictionaries({}, optional=group_keys)) if split < n else {}
    steps = draw(st.integers(2, 4))
    absent = draw(st.lists(st.tuples(st.integers(0, steps - 1), st.integers(0, n - 1)),
                           max_size=2))
    poison = draw(st.none() | st.tuples(st.integers(0, steps - 1), st.integers(0, n - 1),
                                        st.sampled_from([float("nan"), float("inf"),
                                                         float("-inf")])))
    sparse = draw(st.none() | st.integers(0, n - 1))
    dtype = st.sampled_from(DTYPES)
    dtypes = draw(st.lists(dtype, min_size=n, max_size=n) if draw(st.booleans())
                  else dtype.map(lambda d: [d] * n))
    return Problem(options, shapes, transposed, dtypes, split, group2, steps, absent, poison,
                   sparse, draw(st.integers(1, steps - 1)))


def make_params(pb: Problem) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    out = []
    for shape, t, dtype in zip(pb.shapes, pb.transposed, pb.dtypes):
        full = shape[::-1] if t else shape
        x = torch.randn(full, generator=g).to(dtype)
        out.append(torch.nn.Parameter(x.transpose(0, -1) if t else x))
    return out


def grads_at(pb: Problem, params, step: int) -> list[torch.Tensor | None]:
    g = torch.Generator().manual_seed(100 + step)
    grads = []
    for i, p in enumerate(params):
        grad = torch.randn(p.shape, generator=g).to(p.dtype)
        if pb.poison is not None and pb.poison[:2] == (step, i) and grad.numel():
            grad.view(-1)[0] = pb.poison[2]
        if pb.sparse == i and p.dtype == torch.float32:  # torch has no fp16 sparse SGD momentum
            grad = grad.to_sparse()
        grads.append(None if (step, i) in pb.absent else grad)
    return grads


def build(entry: Entry, pb: Problem, params):
    groups = [{"params": params[: pb.split]}]
    if pb.split < len(params):
        groups.append({"params": params[pb.split:], **pb.group2})
    return entry.make(groups, **pb.options)


def do_step(entry: Entry, opt, pb: Problem, params, step: int) -> None:
    for p, g in zip(params, grads_at(pb, params, step)):
        p.grad = g
    if entry.loss:
        opt.step(loss=1.0 + 0.1 * step)
    else:
        opt.step()


def assert_clear(exc: BaseException) -> None:
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    where = f"{type(exc).__name__} at {frame.filename}:{frame.lineno}: {exc}"
    assert isinstance(exc, CLEAR), where
    assert (frame.line or "").lstrip().startswith("raise"), f"not a check: {where}"
    assert str(exc).strip(), where


def snapshot(opt, params):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def same(a, b) -> bool:
    """Equal bit for bit (NaN equal to NaN), through nested dicts and lists."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and (a.is_sparse or b.is_sparse):
        return a.is_sparse == b.is_sparse and same(a.to_dense(), b.to_dense())
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(a.nan_to_num(0.5, 1.5, -1.5), b.nan_to_num(0.5, 1.5, -1.5))
                and torch.equal(a.isnan(), b.isnan()))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)


def run(entry: Entry, pb: Problem, stop: int | None = None):
    """Train; return (params, optimizer, error). With ``stop``: after ``stop`` steps, save and
    load into a fresh optimizer over copies of the weights, then go on."""
    params = make_params(pb)
    try:
        opt = build(entry, pb, params)
    except Exception as exc:  # noqa: BLE001
        assert_clear(exc)
        return params, None, exc
    for step in range(pb.steps):
        if step == stop:
            params, opt = reload(entry, pb, params, opt)
        before = snapshot(opt, params)
        try:
            do_step(entry, opt, pb, params, step)
        except Exception as exc:  # noqa: BLE001
            assert_clear(exc)
            assert same(before, snapshot(opt, params)), f"a failed step changed something: {exc}"
            return params, opt, exc
    return params, opt, None


def reload(entry: Entry, pb: Problem, params, opt):
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    fresh = [torch.nn.Parameter(p.detach().clone()) for p in params]
    new = build(entry, pb, fresh)
    new.load_state_dict(torch.load(buffer, weights_only=False))
    return fresh, new


def finite(p, state) -> list[bool]:
    return [bool(torch.isfinite(t.to_dense() if t.is_sparse else t).all()) for t in [p, *state]]


def check_nonfinite_stays(entry: Entry, pb: Problem, params, opt) -> None:
    """Every tensor but the poisoned one: what is finite in the run without the NaN/inf element
    (weights, each state tensor) is finite in the run with it."""
    clean_params, clean_opt, error = run(entry, replace(pb, poison=None))
    assert error is None, error
    poisoned = pb.poison[1]
    pairs = zip(params, state_by_tensor(opt, params), clean_params,
                state_by_tensor(clean_opt, clean_params))
    for i, (p, state, cp, clean_state) in enumerate(pairs):
        if i != poisoned:
            got, want = finite(p, state), finite(cp, clean_state)
            assert all(g or not w for g, w in zip(got, want)), f"NaN/inf spread to tensor {i}"


def state_by_tensor(opt, params) -> list[list[torch.Tensor]]:
    state = opt.state_dict()["state"]
    return [[v for v in state.get(i, {}).values() if isinstance(v, torch.Tensor)]
            for i in range(len(params))]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ENTRIES))
def test_fuzz(name):
    entry = ENTRIES[name]

    @settings(max_examples=int(os.environ.get("ADAMHD_FUZZ_EXAMPLES", entry.examples)),
              **SETTINGS)
    @given(problems(entry))
    def check(pb: Problem) -> None:
        params, opt, error = run(entry, pb)
        if opt is None or error is not None:
            return
        if pb.poison is not None:
            check_nonfinite_stays(entry, pb, params, opt)
        resumed, opt2, error2 = run(entry, pb, stop=pb.save_at)
        assert error2 is None, error2
        assert same(snapshot(opt, params), snapshot(opt2, resumed)), "resume differs"

    check()


def test_every_exported_optimizer_is_fuzzed():
    missing = {cls.__name__ for cls in exported_optimizer_classes()} - {
        cls.__name__ for cls in COVERS}
    assert not missing, f"add them to tests/fuzz/optimizers.py: {sorted(missing)}"
