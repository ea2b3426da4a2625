"""Low-memory AdamHD moments (``state_dtype``) and stochastic rounding of bf16 parameters.

Formats of a parameter's moments (``exp_avg``, ``exp_avg_sq``):

* ``"float32"``: the parameter's dtype, as torch's AdamW keeps them (the default; bit-exact as
  before this option existed).
* ``"bfloat16"``: bf16 tensors, written with stochastic rounding (below).
* ``"int8"``: one byte per element plus one float32 scale per block of ``BLOCK`` elements of the
  flattened tensor (``exp_avg_scale``, ``exp_avg_sq_scale``). The byte is an 8-bit floating-point
  code of the value divided by its block's scale (a dynamic exponent: about 3-6% relative error
  over 5 decades, not a linear grid):

  - ``exp_avg``: ``m / max|m|`` in a sign bit, 4 exponent bits and 3 mantissa bits;
  - ``exp_avg_sq``: a non-negative code of ``sqrt(v) / max sqrt(v)``: 4 exponent bits and 4
    mantissa bits, no sign (``v`` is stored through its square root, so the code's range covers
    the gradients' range rather than their squares').

  A scaled value ``y`` in ``[0, 1]`` with ``M`` mantissa bits: normal (``y >= 2**-14``):
  ``y``'s float32 bits rounded to ``M`` mantissa bits (half away from zero), exponent ``e`` stored
  as ``e + 15`` (1..15); below ``2**-14``: ``round(y * 2**(14+M))`` (a linear code under the
  smallest normal, as IEEE subnormals). Tensors with fewer than ``min_8bit_size`` elements (and
  float64 parameters) keep the ``"float32"`` format.

Stochastic rounding to bf16 (moments with ``"bfloat16"``; parameters with
``bf16_stochastic_round``): add 16 random bits to the float32 bit pattern and truncate, so the
expected stored value is the float32 one. The bits come from a counter-based hash of
(``seed``, the parameter's position in the optimizer, the stream (m, v or p), the step count, the
element's index): reproducible, independent of threads, and continued exactly after a
``state_dict`` round trip.

The step itself is AdamHD's (``functional``): the moments are decoded to float32 working copies,
the single-tensor or foreach path updates them, and they are encoded back (``step_lowbit``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "BLOCK",
    "DEFAULT_MIN_8BIT_SIZE",
    "STATE_DTYPES",
    "bf16_round_stochastic",
    "check_state_options",
    "convert_moments",
    "decode_code",
    "encode_code",
    "moment_format",
    "noise16",
    "rounding_key",
    "wanted_format",
]

STATE_DTYPES = ("float32", "bfloat16", "int8")
BLOCK = 256
DEFAULT_MIN_8BIT_SIZE = 4096
M_MANTISSA = 3  # exp_avg: sign + 4 exponent + 3 mantissa bits
V_MANTISSA = 4  # sqrt(exp_avg_sq): 4 exponent + 4 mantissa bits
MIN_EXPONENT = -14  # smallest normal exponent of a scaled value
MOMENTS = ("exp_avg", "exp_avg_sq")
SQRT_PIECE = 1 << 22  # elements per float64 piece of sqrt_rn
STREAMS = {"exp_avg": 0, "exp_avg_sq": 1, "param": 2}
_M32 = 0xFFFFFFFF
STATE_OPTIONS = {"state_dtype": "float32", "min_8bit_size": DEFAULT_MIN_8BIT_SIZE,
                 "bf16_stochastic_round": False, "rounding_seed": 0}


def check_state_options(group: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first invalid state-precision option of ``group``."""
    dtype = group.get("state_dtype", "float32")
    if dtype not in STATE_DTYPES:
        raise ValueError(f"state_dtype must be one of {', '.join(map(repr, STATE_DTYPES))}, "
                         f"got {dtype!r}")
    size = group.get("min_8bit_size", DEFAULT_MIN_8BIT_SIZE)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"min_8bit_size must be an int >= 0, got {size!r}")
    seed = group.get("rounding_seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= _M32:
        raise ValueError(f"rounding_seed must be an int in [0, 2**32), got {seed!r}")
    if not isinstance(group.get("bf16_stochastic_round", False), bool):
        raise ValueError("bf16_stochastic_round must be a bool, got "
                         f"{group.get('bf16_stochastic_round')!r}")
    if dtype != "float32" and group.get("amsgrad"):
        raise ValueError(f"state_dtype={dtype!r} does not support amsgrad=True (its running "
                         "maximum has no low-bit format); use state_dtype='float32'")


def is_lowbit(group: Mapping[str, Any]) -> bool:
    """Whether a group's step goes through ``step_lowbit`` (working copies)."""
    return group.get("state_dtype", "float32") != "float32" or bool(
        group.get("bf16_stochastic_round", False))


# ---- formats --------------------------------------------------------------------------------


def _local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2), else ``t``: blocks are cut within a shard."""
    return t.to_local() if hasattr(t, "to_local") else t


def wanted_format(group: Mapping[str, Any], p: Tensor) -> str:
    """The format a group's ``state_dtype`` gives ``p``'s moments (``"float32"`` for float64
    parameters and for tensors under ``min_8bit_size`` elements with ``"int8"``)."""
    dtype = group.get("state_dtype", "float32")
    if dtype == "float32" or p.dtype == torch.float64:
        return "float32"
    if dtype == "int8":
        size = max(group.get("min_8bit_size", DEFAULT_MIN_8BIT_SIZE), 1)
        # the whole tensor's size: every rank of a sharded parameter takes the same format
        return "int8" if p.numel() >= size else "float32"
    return dtype


def moment_format(state: Mapping[str, Any], p: Tensor) -> str:
    """The format ``state``'s moments are in now."""
    m = state["exp_avg"]
    if m.dtype == torch.uint8:
        return "int8"
    if m.dtype == torch.bfloat16 and p.dtype != torch.bfloat16:
        return "bfloat16"
    return "float32"


def blocks(p: Tensor) -> int:
    """Blocks of an int8 moment of ``p`` (of its local shard for a DTensor)."""
    return -(-_local(p).numel() // BLOCK)


# ---- the 8-bit code ---------------------------------------------------------------------------


def encode_code(y: Tensor, mantissa: int) -> Tensor:
    """Codes (int64, ``0..15 << mantissa``) of float32 ``y`` in ``[0, 1]``."""
    bits = y.view(torch.int32).to(torch.int64)
    normal = ((bits + (1 << (22 - mantissa))) >> (23 - mantissa)) - (112 << mantissa)
    sub = torch.round(y * 2.0 ** (-MIN_EXPONENT + mantissa)).to(torch.int64)
    code = torch.where(y >= 2.0 ** MIN_EXPONENT, normal, sub)
    return code.clamp_(0, 15 << mantissa)


def decode_code(code: Tensor, mantissa: int) -> Tensor:
    """float32 ``y`` of int64 codes (the inverse of ``encode_code`` on its grid)."""
    normal = ((code + (112 << mantissa)) << (23 - mantissa)).to(torch.int32).view(torch.float32)
    sub = code.to(torch.float32) * 2.0 ** (MIN_EXPONENT - mantissa)
    return torch.where(code >= (1 << mantissa), normal, sub)


def _by_block(x: Tensor) -> Tensor:
    """The flattened ``x`` zero-padded to whole blocks, as (blocks, BLOCK)."""
    flat = x.reshape(-1)
    pad = (-flat.numel()) % BLOCK
    return torch.nn.functional.pad(flat, (0, pad)).view(-1, BLOCK)


def _unblock(x: Tensor, like: Tensor) -> Tensor:
    return x.reshape(-1)[: like.numel()].view(like.shape)


def sqrt_rn(x: Tensor) -> Tensor:
    """sqrt of float32 ``x``, correctly rounded (through float64, in pieces). torch's float32
    sqrt on CPU is not on large tensors (MKL VML: about 0.6% of the values 1 ulp off), and the
    code of ``v`` must not depend on a tensor's size nor differ from the fused kernel's IEEE
    sqrt."""
    flat = x.reshape(-1)
    out = torch.empty_like(flat)
    for start in range(0, flat.numel(), SQRT_PIECE):
        piece = flat[start:start + SQRT_PIECE]
        out[start:start + piece.numel()] = piece.double().sqrt()
    return out.view(x.shape)


def encode_int8(x: Tensor, signed: bool) -> tuple[Tensor, Tensor]:
    """(uint8 codes shaped like ``x``, float32 scale per block) of the float32 ``x``.

    ``signed``: ``x`` is ``exp_avg`` (sign + 4 + 3 bits of ``x/max|x|``); else ``x`` is
    ``exp_avg_sq`` (4 + 4 bits of ``sqrt(x)/max sqrt(x)``)."""
    values = _by_block(x.float() if signed else sqrt_rn(x.float()))
    mag = values.abs()
    scale = mag.amax(dim=1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    inv = 1.0 / safe  # scaled by the reciprocal (one division per block), unless it overflows
    y = torch.where(torch.isinf(inv)[:, None], mag / safe[:, None], mag * inv[:, None])
    code = encode_code(y, M_MANTISSA if signed else V_MANTISSA)
    if signed:
        code = code | torch.where(values.view(torch.int32) < 0, 128, 0)
    return _unblock(code.to(torch.uint8), x), scale


def decode_int8(code: Tensor, scale: Tensor, signed: bool) -> Tensor:
    """float32 values of uint8 ``code`` with per-block ``scale`` (``encode_int8``'s inverse)."""
    return _unblock(decode_scaled(_by_block(code.to(torch.int64)), scale[:, None], signed), code)


def decode_scaled(code: Tensor, scale: Tensor, signed: bool) -> Tensor:
    """float32 values of int64 codes ``code`` times ``scale`` (broadcast against ``code``: one
    per block in ``decode_int8``, one per element when a checkpoint's blocks are not this
    process's, ``scales.local_scales``)."""
    if signed:
        y = decode_code(code & 127, M_MANTISSA)
        return torch.where(code >= 128, -(y * scale), y * scale)
    root = decode_code(code, V_MANTISSA) * scale
    return root * root


# ---- stochastic rounding ------------------------------------------------------------------


def _mix32(x: Any) -> Any:
    """A 32-bit integer hash (xor-shift-multiply; int64 tensors or Python ints in [0, 2**32))."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _M32
    return x ^ (x >> 16)


def rounding_key(seed: int, position: int, stream: int, step: int) -> int:
    """The per-tensor, per-step key of the rounding noise."""
    key = _mix32((seed + 0x632BE5AB * (position + 1)) & _M32)
    key = _mix32((key ^ (0x1B873593 * (stream + 1))) & _M32)
    return int(_mix32((key + 0x5BD1E995 * step) & _M32))


def noise16(key: int, numel: int, offset: int = 0, device: Any = None) -> Tensor:
    """16 random bits (int64 in ``[0, 65536)``) per element ``offset .. offset+numel-1``."""
    index = torch.arange(offset, offset + numel, dtype=torch.int64, device=device)
    return _mix32((index + key) & _M32) & 0xFFFF


def bf16_round_stochastic(x: Tensor, noise: Tensor) -> Tensor:
    """bf16 of float32 ``x``, rounded up in magnitude with probability (dropped bits)/2**16:
    ``noise`` (int64, ``[0, 65536)``, shaped like ``x``) is added to the bit pattern, which is
    then truncated. NaN stays NaN."""
    bits = x.view(torch.int32).to(torch.int64) & _M32
    upper = (bits + noise.view(x.shape)) >> 16
    upper = torch.where(upper >= 32768, upper - 65536, upper)
    out = upper.to(torch.int16).view(torch.bfloat16)
    return torch.where(torch.isnan(x), x.to(torch.bfloat16), out)


# ---- moments in and out of their formats --------------------------------------------------


def decode_moment(state: Mapping[str, Any], key: str, p: Tensor, work: torch.dtype) -> Tensor:
    """``state[key]`` (a moment) as a tensor of dtype ``work`` (a new one unless it already is)."""
    t = state[key]
    if t.dtype != torch.uint8:
        return t if t.dtype == work else t.to(work)
    local = decode_int8(_local(t), state[f"{key}_scale"], key == "exp_avg").to(work)
    if local is not _local(t) and hasattr(t, "to_local"):
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(local, t.device_mesh, t.placements, shape=t.shape,
                                  stride=t.stride())
    return local


def encode_moment(state: dict[str, Any], key: str, value: Tensor, p: Tensor, fmt: str,
                  rounding: Callable[[Tensor], Tensor] | None) -> None:
    """Store ``value`` (float) as ``state[key]`` in ``fmt`` (in place where the dtype allows).
    ``rounding``: bf16 stochastic rounding of a float32 tensor (``None``: round to nearest)."""
    state.pop(f"{key}_scale", None)
    if fmt == "int8":
        code, scale = encode_int8(_local(value), key == "exp_avg")
        _store(state, key, code)
        state[f"{key}_scale"] = scale
        return
    dtype = torch.bfloat16 if fmt == "bfloat16" else p.dtype
    if dtype == torch.bfloat16 and rounding is not None and value.dtype == torch.float32:
        _store(state, key, rounding(_local(value)))
    else:
        _store(state, key, _local(value).to(dtype))


def _store(state: dict[str, Any], key: str, local: Tensor) -> None:
    """``state[key]``'s values (its local shard for a DTensor) := ``local``."""
    old = state.get(key)
    if old is not None and old.dtype == local.dtype and _local(old).shape == local.shape:
        if _local(old) is not local:
            _local(old).copy_(local)
        return
    if old is not None and hasattr(old, "to_local"):
        from torch.distributed.tensor import DTensor

        local = DTensor.from_local(local.contiguous(), old.device_mesh, old.placements,
                                   shape=old.shape, stride=old.stride())
    state[key] = local


def convert_moments(state: dict[str, Any], p: Tensor, fmt: str) -> None:
    """Convert ``state``'s moments to ``fmt`` in place (round to nearest; int8: its code).
    A float32 -> int8 -> float32 round trip loses the code's precision (``docs/checkpoints.md``)."""
    if not state or "exp_avg" not in state or moment_format(state, p) == fmt:
        return
    work = torch.float64 if p.dtype == torch.float64 else torch.float32
    for key in MOMENTS:
        value = decode_moment(state, key, p, work)
        encode_moment(state, key, value, p, fmt, None)


def new_moments(p: Tensor, fmt: str) -> dict[str, Tensor]:
    """Zero moments of ``p`` in ``fmt``."""
    if fmt == "float32":
        dtype = p.dtype
    else:
        dtype = torch.uint8 if fmt == "int8" else torch.bfloat16
    out = {key: torch.zeros_like(p, dtype=dtype, memory_format=torch.contiguous_format)
           for key in MOMENTS}
    if fmt == "int8":
        for key in MOMENTS:
            out[f"{key}_scale"] = torch.zeros(blocks(p), dtype=torch.float32,
                                              device=_local(p).device)
    return out


def step_count(step: Tensor) -> int:
    value = float(step)
    return int(value) if math.isfinite(value) else 0


# ---- the step on working copies -----------------------------------------------------------

#: elements of one slice of a group's working copies (bounds the transient float32 memory)
SLICE_ELEMENTS = 1 << 24


def _slices(params: list[Tensor]) -> list[list[int]]:
    """Index lists of consecutive tensors with about ``SLICE_ELEMENTS`` elements each (one slice
    for sharded params: the adaptive threshold's all-reduce covers the whole group)."""
    from adamhd.distributed import any_dtensor

    if any_dtensor(params):
        return [list(range(len(params)))]
    out: list[list[int]] = [[]]
    size = 0
    for i, p in enumerate(params):
        if out[-1] and size + p.numel() > SLICE_ELEMENTS:
            out.append([])
            size = 0
        out[-1].append(i)
        size += p.numel()
    return out


def step_lowbit(tensors: Any, hyper: Any, group: Mapping[str, Any],
                states: list[dict[str, Any]], positions: list[int], foreach: bool) -> None:
    """One AdamHD step of a group whose moments are low-bit or whose bf16 parameters are
    rounded stochastically: decode to float32 working copies, run the single-tensor or foreach
    step on them, encode back. ``positions``: each parameter's index in the optimizer (the
    rounding noise's key)."""
    for index in _slices(tensors.params):
        part = tensors.select(index)
        _step_slice(part, hyper, group, [states[i] for i in index],
                    [positions[i] for i in index], foreach)


def _step_slice(t: Any, hyper: Any, group: Mapping[str, Any], states: list[dict[str, Any]],
                positions: list[int], foreach: bool) -> None:
    from adamhd.optim.adamhd.functional import adamhd_step
    from adamhd.optim.adamhd.step import AdamTensors

    work = AdamTensors(state_steps=t.state_steps, delta_mus=t.delta_mus)
    for p, g, state in zip(t.params, t.grads, states):
        dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
        work.params.append(p if p.dtype == dtype else p.detach().to(dtype))
        work.grads.append(g if g.dtype == dtype else g.to(dtype))
        work.exp_avgs.append(decode_moment(state, "exp_avg", p, dtype))
        work.exp_avg_sqs.append(decode_moment(state, "exp_avg_sq", p, dtype))
        if hyper.amsgrad:
            work.max_exp_avg_sqs.append(decode_moment(state, "max_exp_avg_sq", p, dtype))
    adamhd_step(work, hyper, foreach=foreach)
    seed = group.get("rounding_seed", 0)
    for i, (p, state) in enumerate(zip(t.params, states)):
        step = step_count(t.state_steps[i])

        offset = global_offset(p)

        def rounding(x: Tensor, stream: str, i: int = i, step: int = step,
                     offset: int = offset) -> Tensor:
            key = rounding_key(seed, positions[i], STREAMS[stream], step)
            return bf16_round_stochastic(x, noise16(key, x.numel(), offset, device=x.device))

        fmt = wanted_format(group, p)
        for key, value in (("exp_avg", work.exp_avgs[i]), ("exp_avg_sq", work.exp_avg_sqs[i])):
            encode_moment(state, key, value, p, fmt, lambda x, key=key: rounding(x, key))
        if hyper.amsgrad:
            state["max_exp_avg_sq"].copy_(work.max_exp_avg_sqs[i])
        if work.params[i] is not p:
            _write_param(p, work.params[i], group, lambda x: rounding(x, "param"))


def global_offset(p: Tensor) -> int:
    """Index in the whole flattened tensor of a DTensor's first local element, where its local
    shard is one contiguous range of it (sharded on dim 0 only), else 0: the rounding noise of
    an FSDP2 shard is then the one a single process draws for the same elements."""
    if not hasattr(p, "to_local"):
        return 0
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if any(isinstance(pl, Shard) and pl.dim != 0 for pl in p.placements):
        return 0
    _, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    row = math.prod(p.shape[1:]) if p.dim() > 1 else 1
    return int(offset[0]) * row if p.dim() else 0


def _write_param(p: Tensor, value: Tensor, group: Mapping[str, Any],
                 rounding: Callable[[Tensor], Tensor]) -> None:
    with torch.no_grad():
        if p.dtype == torch.bfloat16 and group.get("bf16_stochastic_round", False):
            _local(p).copy_(rounding(_local(value)))
        else:
            p.copy_(value)


# ---- checkpoints ----------------------------------------------------------------------------


#: the largest byte of each moment's code (exp_avg: its 7 magnitude bits; exp_avg_sq: all 8)
CODE_MAX = {"exp_avg": 15 << M_MANTISSA, "exp_avg_sq": 15 << V_MANTISSA}


def _code_problem(key: str, code: Tensor, scale: Any) -> str | None:
    """What makes an 8-bit code of a checkpoint unreadable (``None`` if nothing)."""
    if not isinstance(scale, Tensor):
        return f"{key!r} is an 8-bit code without its {key}_scale"
    magnitude = _local(code) & 127 if key == "exp_avg" else _local(code)
    if magnitude.numel() and int(magnitude.max()) > CODE_MAX[key]:
        return (f"{key!r} holds bytes above {CODE_MAX[key]}, which its code never writes "
                f"(a corrupt checkpoint?)")
    if bool((_local(scale) < 0).any()):
        return f"{key}_scale holds negative scales, which its code never writes"
    return None


def check_saved_codes(optimizer: torch.optim.Optimizer, state_dict: Mapping[str, Any]) -> None:
    """Before a load changes anything: ``StateError`` for an 8-bit moment of ``state_dict``
    that cannot be decoded (no scale, a byte outside the code, a negative scale), naming the
    parameter as the other state checks do."""
    from adamhd.state import StateError

    for gi, group in enumerate(state_dict["param_groups"]):
        for position, saved_id in enumerate(group["params"]):
            saved = state_dict["state"].get(saved_id)
            if not isinstance(saved, Mapping):
                continue
            for key in MOMENTS:
                code = saved.get(key)
                if not isinstance(code, Tensor) or code.dtype != torch.uint8:
                    continue
                problem = _code_problem(key, code, saved.get(f"{key}_scale"))
                if problem is not None:
                    raise StateError(f"{type(optimizer).__name__}.load_state_dict: state of "
                                     f"param_groups[{gi}]['params'][{position}]: {problem}")


def restore_moments(optimizer: torch.optim.Optimizer, state_dict: Mapping[str, Any]) -> None:
    """After torch's load (which casts every state tensor to the parameter's dtype): each
    parameter's moments as saved (bit for bit), then converted to the format its group wants."""
    from itertools import chain

    saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
    pairs = ((group, p) for group in optimizer.param_groups for p in group["params"])
    for saved_id, (group, p) in zip(saved_ids, pairs):
        saved = state_dict["state"].get(saved_id, {})
        state = optimizer.state.get(p)
        if not state or not all(isinstance(saved.get(k), Tensor) for k in MOMENTS):
            continue
        for key in MOMENTS:
            value = saved[key]
            device = state[key].device
            state[key] = value.to(device=device, copy=True)
            if value.dtype != torch.uint8:
                state.pop(f"{key}_scale", None)
                if value.dtype != torch.bfloat16:
                    state[key] = state[key].to(p.dtype)  # as torch's load casts it
        convert_moments(state, p, wanted_format(group, p))
