"""The fused step of low-bit AdamHD groups on CUDA, as a Triton kernel (issue 19).

The CUDA counterpart of ``adamhd::fused_lowbit_step_`` (``kernels/lowbit.py``): one program per
block of ``lowbit.BLOCK`` = 256 elements (the int8 code's block) decodes the block's moments,
runs the float step of the full-precision Triton kernel (``triton_adamhd._moments`` and
``_decayed_update``: Huber or L2, explicit or proximal, fixed or adaptive threshold, cautious
decay, ``maximize``, ``lr`` as a tensor, GradScaler's ``grad_scale``/``found_inf``), takes the
block's new maxima for the scales and encodes the moments back; bf16 moments (and bf16 weights
with ``bf16_stochastic_round``) are rounded with the counter-based noise of
``adamhd.optim.adamhd.lowbit`` (``rounding_key``, ``noise16``) in uint32 arithmetic. One launch
per (parameter dtype, moment format) of a group, pointer tables as the fp32 kernel's.

Formats per tensor, from ``exp_avg``'s dtype: uint8 codes with float32 scales, bfloat16, or the
parameter's dtype (tensors under ``min_8bit_size``). The code of ``v`` takes ``sqrt_rn`` and the
scaled value ``|x| * div_rn(1, scale)``, as the reference does. Tested on CPU with
``TRITON_INTERPRET=1`` against the reference (``tests/kernels/test_triton_lowbit.py``); not timed
on a GPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from adamhd.kernels import spec, triton_adamhd
from adamhd.kernels.triton_adamhd import tl, triton

if TYPE_CHECKING:
    from adamhd.optim.adamhd.step import AdamStep, AdamTensors

__all__ = ["lowbit_reason", "lowbit_step"]

LOW_BLOCK = 256  # adamhd.optim.adamhd.lowbit.BLOCK (tested equal)
#: moment formats and their code in the kernel
MOMENT_KINDS = {"plain": 0, "bfloat16": 1, "int8": 2}

if triton is not None:

    @triton.jit
    def _mix32(x):
        """``lowbit._mix32`` on uint32 values (products wrap modulo 2**32)."""
        x = x ^ (x >> 16)
        x = x * 0x7FEB352D
        x = x ^ (x >> 15)
        x = x * 0x2C1B3C6D
        return x ^ (x >> 16)

    @triton.jit
    def _bf16_bits(x, offsets, key, STOCHASTIC: tl.constexpr):
        """bf16 bits (uint16) of float32 ``x``: stochastically (``noise16`` of element
        ``offsets`` under ``key``) or to nearest even; NaN as 0x7FC0."""
        u = x.to(tl.uint32, bitcast=True)
        if STOCHASTIC:
            add = _mix32(offsets.to(tl.uint32) + key) & 0xFFFF
        else:
            add = 0x7FFF + ((u >> 16) & 1)
        out = ((u + add) >> 16).to(tl.uint16)
        return tl.where(x != x, 0x7FC0, out).to(tl.uint16)

    @triton.jit
    def _decode(code, scale, M: tl.constexpr, SIGNED: tl.constexpr):
        """float32 values of uint8 codes (``lowbit.decode_int8``): ``m``, or ``v`` (squared)."""
        c = code.to(tl.uint32)
        if SIGNED:
            c = c & 127
        normal = ((c + (112 << M)) << (23 - M)).to(tl.float32, bitcast=True)
        sub = c.to(tl.float32) * (1.0 / (1 << (14 + M)))
        value = tl.where(c >= (1 << M), normal, sub) * scale
        if SIGNED:
            value = tl.where(code >= 128, -value, value)
        else:
            value = value * value
        return value

    @triton.jit
    def _encode(x, mask, M: tl.constexpr, SIGNED: tl.constexpr):
        """(uint8 codes, scale) of the block's values ``x`` (``m``, or ``sqrt(v)``):
        ``lowbit.encode_int8``'s code of ``|x| / max|x|``."""
        mag = tl.where(mask, tl.abs(x), 0.0)
        scale = tl.max(mag, axis=0)
        safe = tl.where(scale > 0.0, scale, 1.0)
        inv = tl.div_rn(1.0, safe)
        y = tl.where(inv == float("inf"), tl.div_rn(mag, safe), mag * inv)
        normal = ((y.to(tl.uint32, bitcast=True) + (1 << (22 - M))) >> (23 - M)).to(tl.int32)
        normal = normal - (112 << M)
        t = y * (1 << (14 + M))
        sub = ((t + 8388608.0) - 8388608.0).to(tl.int32)  # round half to even
        c = tl.where(y >= 1.0 / 16384.0, normal, sub)
        c = tl.minimum(tl.maximum(c, 0), 15 << M)
        if SIGNED:
            c = tl.where(x.to(tl.int32, bitcast=True) < 0, c | 128, c)
        return c.to(tl.uint8), scale

    @triton.jit
    def _lowbit_kernel(
        p_tab, g_tab, m_tab, v_tab, ms_tab, vs_tab, numel_tab, block_tensor, block_start,
        step_tab, key_tab, d_tab, sum_tab, lr_ptr, lr_value, scale_ptr, found_ptr,
        beta1, beta2, eps, weight_decay,
        DTYPE: tl.constexpr,
        P_BF16: tl.constexpr,  # parameters bf16, written through their bits
        P_SR: tl.constexpr,  # bf16 parameters rounded stochastically
        MOMENT: tl.constexpr,  # MOMENT_KINDS
        DECAY: tl.constexpr,
        CAUTIOUS: tl.constexpr,
        MAXIMIZE: tl.constexpr,
        LR_PTR: tl.constexpr,
        HAS_SCALE: tl.constexpr,
        HAS_FOUND: tl.constexpr,
        WANT_SUM: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
    ):
        t, start, offsets, mask, lr = triton_adamhd._program_block(
            block_tensor, block_start, numel_tab, found_ptr, lr_ptr, lr_value, HAS_FOUND,
            LR_PTR, BLOCK_SIZE)
        p_ptr = tl.load(p_tab + t).to(tl.pointer_type(DTYPE))
        g_ptr = tl.load(g_tab + t).to(tl.pointer_type(DTYPE))
        bc1, bc2_sqrt, neg_step_size = triton_adamhd._bias_corrections(
            tl.load(step_tab + t), lr, beta1, beta2)

        m, v = _load_moments(m_tab, v_tab, ms_tab, vs_tab, t, start, offsets, mask, DTYPE,
                             MOMENT, BLOCK_SIZE)
        p = tl.load(p_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        if HAS_SCALE:
            g = g / tl.load(scale_ptr).to(tl.float32)
            tl.store(g_ptr + offsets, g.to(DTYPE), mask=mask)
        m, v = triton_adamhd._moments(g, m, v, beta1, beta2, MAXIMIZE)
        p = triton_adamhd._decayed_update(
            p, m, v, mask, tl.load(d_tab + t), lr * weight_decay, lr, bc1, bc2_sqrt,
            neg_step_size, eps, 1.0, 1.0, DECAY, 0, CAUTIOUS)
        _store_moments(m, v, m_tab, v_tab, ms_tab, vs_tab, t, start, offsets, mask,
                       tl.load(key_tab + 3 * t).to(tl.uint32),
                       tl.load(key_tab + 3 * t + 1).to(tl.uint32), DTYPE, MOMENT, BLOCK_SIZE)
        if P_BF16:
            bits = _bf16_bits(p, offsets, tl.load(key_tab + 3 * t + 2).to(tl.uint32), P_SR)
            p_bits = tl.load(p_tab + t).to(tl.pointer_type(tl.uint16))
            tl.store(p_bits + offsets, bits, mask=mask)
            p_out = (bits.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
        else:
            p_out = p.to(DTYPE)
            tl.store(p_ptr + offsets, p_out, mask=mask)
        if WANT_SUM:
            part = tl.sum(tl.where(mask, tl.abs(p_out.to(tl.float32)), 0.0), axis=0)
            tl.atomic_add(sum_tab + t, part)

    @triton.jit
    def _load_moments(m_tab, v_tab, ms_tab, vs_tab, t, start, offsets, mask,
                      DTYPE: tl.constexpr, MOMENT: tl.constexpr, BLOCK_SIZE: tl.constexpr):
        """The block's ``m`` and ``v`` in float32, decoded from their storage."""
        if MOMENT == 2:
            m_ptr = tl.load(m_tab + t).to(tl.pointer_type(tl.uint8))
            v_ptr = tl.load(v_tab + t).to(tl.pointer_type(tl.uint8))
            blk = start // BLOCK_SIZE
            m_scale = tl.load(tl.load(ms_tab + t).to(tl.pointer_type(tl.float32)) + blk)
            v_scale = tl.load(tl.load(vs_tab + t).to(tl.pointer_type(tl.float32)) + blk)
            m = _decode(tl.load(m_ptr + offsets, mask=mask, other=0), m_scale, 3, True)
            v = _decode(tl.load(v_ptr + offsets, mask=mask, other=0), v_scale, 4, False)
        elif MOMENT == 1:
            m_ptr = tl.load(m_tab + t).to(tl.pointer_type(tl.uint16))
            v_ptr = tl.load(v_tab + t).to(tl.pointer_type(tl.uint16))
            m_bits = tl.load(m_ptr + offsets, mask=mask, other=0).to(tl.uint32) << 16
            v_bits = tl.load(v_ptr + offsets, mask=mask, other=0).to(tl.uint32) << 16
            m = m_bits.to(tl.float32, bitcast=True)
            v = v_bits.to(tl.float32, bitcast=True)
        else:
            m_ptr = tl.load(m_tab + t).to(tl.pointer_type(DTYPE))
            v_ptr = tl.load(v_tab + t).to(tl.pointer_type(DTYPE))
            m = tl.load(m_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        return m, v

    @triton.jit
    def _store_moments(m, v, m_tab, v_tab, ms_tab, vs_tab, t, start, offsets, mask, key_m,
                       key_v, DTYPE: tl.constexpr, MOMENT: tl.constexpr,
                       BLOCK_SIZE: tl.constexpr):
        """``m`` and ``v`` written in their storage (int8: codes and the block's new scales)."""
        if MOMENT == 2:
            m_code, m_scale = _encode(m, mask, 3, True)
            v_code, v_scale = _encode(tl.sqrt_rn(v), mask, 4, False)
            tl.store(tl.load(m_tab + t).to(tl.pointer_type(tl.uint8)) + offsets, m_code,
                     mask=mask)
            tl.store(tl.load(v_tab + t).to(tl.pointer_type(tl.uint8)) + offsets, v_code,
                     mask=mask)
            blk = start // BLOCK_SIZE
            live = tl.sum(mask.to(tl.int32), axis=0) > 0  # not on a skipped step
            tl.store(tl.load(ms_tab + t).to(tl.pointer_type(tl.float32)) + blk, m_scale,
                     mask=live)
            tl.store(tl.load(vs_tab + t).to(tl.pointer_type(tl.float32)) + blk, v_scale,
                     mask=live)
        elif MOMENT == 1:
            tl.store(tl.load(m_tab + t).to(tl.pointer_type(tl.uint16)) + offsets,
                     _bf16_bits(m, offsets, key_m, True), mask=mask)
            tl.store(tl.load(v_tab + t).to(tl.pointer_type(tl.uint16)) + offsets,
                     _bf16_bits(v, offsets, key_v, True), mask=mask)
        else:
            tl.store(tl.load(m_tab + t).to(tl.pointer_type(DTYPE)) + offsets, m.to(DTYPE),
                     mask=mask)
            tl.store(tl.load(v_tab + t).to(tl.pointer_type(DTYPE)) + offsets, v.to(DTYPE),
                     mask=mask)


# ------------------------------------------------------------------------------------------------
# Host side
# ------------------------------------------------------------------------------------------------


def lowbit_reason(group: Any, params: list[Tensor]) -> str | None:
    """Why the Triton low-bit kernel cannot step ``params`` of ``group``, or ``None``: plain
    contiguous CUDA tensors (CPU tensors under ``TRITON_INTERPRET=1``) of
    ``spec.LOWBIT_DTYPES``, and Triton available."""
    reason = spec.state_reason(group, "cuda") or triton_adamhd.unavailable_reason()
    if reason is not None:
        return reason
    device = "cpu" if triton_adamhd.interpreting() else "cuda"
    for p in params:
        if type(p) not in (Tensor, torch.nn.Parameter) or p.device.type != device:
            return (f"the fused low-bit Triton kernel takes plain {device.upper()} tensors "
                    "(DTensor shards run on the foreach and single-tensor paths)")
        if p.dtype not in spec.LOWBIT_DTYPES:
            return (f"the fused low-bit Triton kernel does not take {p.dtype} parameters "
                    "(float64 parameters keep float64 moments; use fused=None or False)")
        if not p.is_contiguous():
            return "the fused low-bit Triton kernel takes contiguous parameters"
    return None


def moment_kind(state: dict[str, Any]) -> int:
    """The storage code (``MOMENT_KINDS``) of ``state``'s moments."""
    m = state["exp_avg"]
    if m.dtype == torch.uint8:
        return MOMENT_KINDS["int8"]
    # bf16 moments are written stochastically, whatever the parameter's dtype (as the CPU op)
    return MOMENT_KINDS["bfloat16" if m.dtype == torch.bfloat16 else "plain"]


def lowbit_step(
    tensors: AdamTensors,
    hyper: AdamStep,
    group: Any,
    states: list[dict[str, Any]],
    positions: list[int],
    *,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """One fused step of a low-bit group on CUDA, in place (the arguments as
    ``kernels.lowbit.fused_lowbit_step``'s): steps and thresholds advanced on device, then one
    launch per (parameter dtype, moment format)."""
    params = tensors.params
    if not params:
        return
    reason = spec.decay_reason(hyper.decay) or lowbit_reason(group, params)
    if reason is not None:
        raise RuntimeError(f"fused low-bit AdamHD step impossible: {reason}")
    _check_states(params, states)
    found = None if found_inf is None else found_inf.reshape(()).to(torch.float32)
    steps = triton_adamhd.advance_steps(tensors.state_steps, found)
    ds, abs_means = triton_adamhd.next_thresholds(tensors, hyper, found)
    keys = _noise_keys(steps, positions, int(group.get("rounding_seed", 0)))
    device = params[0].device
    sums = torch.zeros(len(params), device=device, dtype=torch.float32)
    launches: dict[tuple[torch.dtype, int], list[int]] = {}
    for i, (p, state) in enumerate(zip(params, states)):
        launches.setdefault((p.dtype, moment_kind(state)), []).append(i)
    for (_, kind), index in launches.items():
        _launch(tensors, hyper, group, states, positions, index, kind,
                (steps, keys, ds, sums, grad_scale, found, abs_means is not None))
    tables = triton_adamhd._launch_tables([params], device, LOW_BLOCK)
    triton_adamhd.finish_step(params, tables, sums, abs_means, found)


def _noise_keys(steps: Tensor, positions: list[int], seed: int) -> Tensor:
    """``lowbit.rounding_key`` of each tensor for the streams m, v, p (int64, shape (n, 3)) at
    the new step counts ``steps`` (float32, on device: no host synchronisation)."""
    from adamhd.optim.adamhd import lowbit

    count = torch.where(torch.isfinite(steps), steps, torch.zeros_like(steps)).to(torch.int64)
    position = torch.tensor(positions, device=steps.device, dtype=torch.int64)
    key = lowbit._mix32((seed + 0x632BE5AB * (position + 1)) & lowbit._M32)
    streams = torch.tensor([lowbit.STREAMS[k] for k in ("exp_avg", "exp_avg_sq", "param")],
                           device=steps.device, dtype=torch.int64)
    key = lowbit._mix32((key[:, None] ^ (0x1B873593 * (streams + 1))) & lowbit._M32)
    return lowbit._mix32((key + 0x5BD1E995 * count[:, None]) & lowbit._M32).contiguous()


def _check_states(params: list[Tensor], states: list[dict[str, Any]]) -> None:
    """Every moment contiguous, of its parameter's shape, with its scales for uint8 codes:
    checked before anything changes."""
    for i, (p, state) in enumerate(zip(params, states)):
        for key in ("exp_avg", "exp_avg_sq"):
            x = state[key]
            if x.shape != p.shape or not x.is_contiguous() or x.device != p.device:
                raise RuntimeError(f"fused low-bit AdamHD step: {key} of parameter {i} must be "
                                   f"a contiguous tensor of its shape {tuple(p.shape)}")
            if x.dtype == torch.uint8:
                s = state.get(f"{key}_scale")
                blocks = -(-p.numel() // LOW_BLOCK)
                if not isinstance(s, Tensor) or s.dtype != torch.float32 or s.numel() != blocks:
                    raise RuntimeError(f"fused low-bit AdamHD step: {key}_scale of parameter "
                                       f"{i} must be {blocks} float32 values")


def _launch(tensors, hyper, group, states, positions, index, kind, shared) -> None:
    """One launch over the tensors ``index`` (one parameter dtype, one moment format)."""
    steps, keys, ds, sums, grad_scale, found, want_sum = shared
    params = [tensors.params[i] for i in index]
    int8 = kind == MOMENT_KINDS["int8"]
    pick = [[s[k] for s in (states[i] for i in index)] for k in ("exp_avg", "exp_avg_sq")]
    scales = [[states[i][f"{k}_scale"] for i in index] if int8 else []
              for k in ("exp_avg", "exp_avg_sq")]
    device = params[0].device
    tables = triton_adamhd._launch_tables(
        [params, [tensors.grads[i] for i in index], *pick, *scales], device, LOW_BLOCK)
    if tables.blocks == 0:
        return
    sel = torch.tensor(index, device=device, dtype=torch.int64)
    sub_sums = torch.zeros(len(index), device=device, dtype=torch.float32)
    lr = hyper.lr
    lr_t = lr.reshape(()).to(device=device, dtype=torch.float32) if isinstance(lr, Tensor) else None
    dummy = torch.zeros((), device=device, dtype=torch.float32)
    p_tab, g_tab, m_tab, v_tab, ms_tab, vs_tab = tables.pointers
    dtype = params[0].dtype
    _lowbit_kernel[(tables.blocks,)](
        p_tab, g_tab, m_tab, v_tab, ms_tab, vs_tab, tables.numel, tables.block_tensor,
        tables.block_start, steps[sel], keys[sel], ds[sel], sub_sums,
        lr_t if lr_t is not None else dummy, 0.0 if lr_t is not None else float(lr),
        grad_scale if grad_scale is not None else dummy, found if found is not None else dummy,
        hyper.beta1, hyper.beta2, hyper.eps, hyper.weight_decay,
        DTYPE=triton_adamhd._TL_DTYPES[dtype], P_BF16=dtype == torch.bfloat16,
        P_SR=bool(group.get("bf16_stochastic_round", False)), MOMENT=kind,
        DECAY=spec.decay_kind(hyper), CAUTIOUS=spec.cautious(hyper), MAXIMIZE=hyper.maximize,
        LR_PTR=lr_t is not None, HAS_SCALE=grad_scale is not None, HAS_FOUND=found is not None,
        WANT_SUM=want_sum, BLOCK_SIZE=LOW_BLOCK,
    )
    sums.index_copy_(0, sel, sub_sums)
