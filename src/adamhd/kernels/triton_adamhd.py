"""Fused AdamHD step for CUDA tensors, as a multi-tensor Triton kernel (one pass over memory).

Same math as ``adamhd_cpu.cpp`` and the reference path, in fp32 for fp32/bf16/fp16 parameters.
One launch for all the tensors of one dtype: the tensors' addresses and sizes are packed into
tables in device memory, and every program of the grid looks up which tensor and which block of
it it updates (as torch's foreach kernels and apex's multi-tensor apply do). The tables are cached
by the tensors' addresses, so a loop over the same buffers (a captured CUDA graph) reuses them.
No host synchronisation: the step counts, ``lr`` (if a tensor), the thresholds, ``grad_scale`` and
``found_inf`` are read by the kernel from device memory, so the step can be captured in a CUDA
graph (``capturable=True``). The adaptive threshold's statistic ``sum|p_new|`` is accumulated by
the kernel (``atomic_add`` per block and tensor) while it writes ``p``. With ``grad_scale`` the
unscaled gradient is written back in the same pass.

Without a GPU the kernel's math can be run on CPU tensors with ``TRITON_INTERPRET=1`` (set before
``triton`` is imported); ``tests/kernels/test_triton_interpret.py`` does that.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from adamhd.kernels import spec

if TYPE_CHECKING:
    from adamhd.optim.adamhd.step import AdamStep, AdamTensors

try:
    import triton
    import triton.language as tl

    _IMPORT_ERROR: str | None = None
except Exception as exc:  # not installed, or broken
    triton = None
    tl = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def unavailable_reason() -> str | None:
    if triton is None:
        return f"the fused CUDA kernel needs Triton (pip install triton): {_IMPORT_ERROR}"
    if not torch.cuda.is_available() and not interpreting():
        return "the fused Triton kernel needs a CUDA device"
    return None


BLOCK = 1024

if triton is not None:

    @triton.jit
    def _atan2_nonneg_x(y, x):
        """``atan2(y, x)`` for ``x >= 0``, in fp32 (Cephes' atanf: range reduction to
        ``|r| <= tan(pi/8)`` and a degree-9 odd polynomial, about 1e-7 relative); the interpreter
        has no libdevice."""
        r = tl.abs(y) / x
        big = r > 2.414213562373095
        mid = r > 0.4142135623730950
        xr = tl.where(big, -1.0 / r, tl.where(mid, (r - 1.0) / (r + 1.0), r))
        base = tl.where(big, 1.5707963267948966, tl.where(mid, 0.7853981633974483, 0.0))
        z = xr * xr
        poly = ((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z
        a = base + (poly - 3.33329491539e-1) * z * xr + xr
        a = tl.where(y == 0.0, 0.0, a)
        return tl.where(y < 0.0, -a, a)

    @triton.jit
    def _softplus(x, beta, threshold):
        """``torch.nn.functional.softplus(x, beta, threshold)`` (``x >= 0`` here)."""
        bx = x * beta
        return tl.where(bx > threshold, x, tl.log(1.0 + tl.exp(tl.minimum(bx, threshold))) / beta)

    @triton.jit
    def _bias_corrections(step, lr, beta1, beta2):
        """``(1 - beta1**t, sqrt(1 - beta2**t), -lr / (1 - beta1**t))`` of the step count ``t``."""
        bc1 = 1.0 - tl.exp(step * tl.log(beta1))
        bc2_sqrt = tl.sqrt(1.0 - tl.exp(step * tl.log(beta2)))
        return bc1, bc2_sqrt, -(lr / bc1)

    @triton.jit
    def _moments(g, m, v, beta1, beta2, MAXIMIZE: tl.constexpr):
        """Adam's moments after the gradient ``g`` (negated with ``maximize``)."""
        if MAXIMIZE:
            g = -g
        m = m + (1.0 - beta1) * (g - m)
        v = v * beta2 + (1.0 - beta2) * g * g
        return m, v

    @triton.jit
    def _decayed_update(p, m, second, mask, d, tau, lr, bc1, bc2_sqrt, neg_step_size, eps,
                        update_a, update_b, DECAY: tl.constexpr, UPDATE: tl.constexpr,
                        CAUTIOUS: tl.constexpr):
        """The new weights from ``p_t``, the new ``m`` and the second moment ``second``: the
        decay (Huber with threshold ``d``, L2 where ``d = inf``; explicit before the update,
        proximal after it; cautious: only where ``sign(m) * sign(p_t) >= 0``) and the update
        rule. The float step both Triton kernels (full-precision and low-bit moments) run."""
        p_t = p
        if CAUTIOUS:  # sign(u) * sign(p_t) >= 0; u has m's sign
            keep = ((m >= 0.0) & (p_t >= 0.0)) | ((m <= 0.0) & (p_t <= 0.0))
        else:
            keep = mask
        if DECAY == 1:
            p = tl.where(keep, p * (1.0 - tau) + (p - tl.minimum(tl.maximum(p, -d), d)) * tau, p)
        if UPDATE == 1:  # atan2: u = a * atan2(m_hat, b * sqrt(v_hat))
            u = update_a * _atan2_nonneg_x(m / bc1, update_b * (tl.sqrt(second) / bc2_sqrt))
            p = p - lr * u
        elif UPDATE == 2:  # softplus: u = m_hat / softplus_beta(sqrt(v_hat))
            u = (m / bc1) / _softplus(tl.sqrt(second) / bc2_sqrt, update_a, update_b)
            p = p - lr * u
        else:
            p = p + neg_step_size * m / (tl.sqrt(second) / bc2_sqrt + eps)
        if DECAY == 2:
            x = p / (1.0 + tau)
            p = tl.where(keep, x + (x - tl.minimum(tl.maximum(x, -d), d)) * tau, p)
        return p

    @triton.jit
    def _program_block(block_tensor, block_start, numel_tab, found_ptr, lr_ptr, lr_value,
                       HAS_FOUND: tl.constexpr, LR_PTR: tl.constexpr, BLOCK_SIZE: tl.constexpr):
        """This program's tensor ``t``, its block's first element ``start``, ``offsets`` and
        ``mask`` (all off when GradScaler found inf/nan: touch nothing), and ``lr``; the start
        of both Triton kernels (full-precision and low-bit moments)."""
        pid = tl.program_id(0)
        t = tl.load(block_tensor + pid)
        start = tl.load(block_start + pid)
        offsets = start + tl.arange(0, BLOCK_SIZE).to(tl.int64)
        limit = tl.load(numel_tab + t)
        if HAS_FOUND:
            limit = tl.where(tl.load(found_ptr) == 0.0, limit, 0)
        if LR_PTR:
            lr = tl.load(lr_ptr).to(tl.float32)
        else:
            lr = lr_value
        return t, start, offsets, offsets < limit, lr

    @triton.jit
    def _adamhd_multi_kernel(
        p_tab, g_tab, m_tab, v_tab, x_tab, numel_tab, block_tensor, block_start,
        step_tab, d_tab, sum_tab, lr_ptr, lr_value, scale_ptr, found_ptr,
        beta1, beta2, eps, weight_decay, update_a, update_b,
        DTYPE: tl.constexpr,
        DECAY: tl.constexpr,  # 0 none, 1 explicit, 2 proximal
        UPDATE: tl.constexpr,  # 0 adam, 1 atan2 (a, b), 2 softplus (beta, threshold)
        CAUTIOUS: tl.constexpr,
        AMSGRAD: tl.constexpr,
        MAXIMIZE: tl.constexpr,
        LR_PTR: tl.constexpr,
        HAS_SCALE: tl.constexpr,
        HAS_FOUND: tl.constexpr,
        WANT_SUM: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
    ):
        t, _, offsets, mask, lr = _program_block(block_tensor, block_start, numel_tab,
                                                 found_ptr, lr_ptr, lr_value, HAS_FOUND,
                                                 LR_PTR, BLOCK_SIZE)
        p_ptr = tl.load(p_tab + t).to(tl.pointer_type(DTYPE))
        g_ptr = tl.load(g_tab + t).to(tl.pointer_type(DTYPE))
        m_ptr = tl.load(m_tab + t).to(tl.pointer_type(DTYPE))
        v_ptr = tl.load(v_tab + t).to(tl.pointer_type(DTYPE))
        d = tl.load(d_tab + t)
        tau = lr * weight_decay
        bc1, bc2_sqrt, neg_step_size = _bias_corrections(tl.load(step_tab + t), lr, beta1, beta2)

        p = tl.load(p_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        m = tl.load(m_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        if HAS_SCALE:
            g = g / tl.load(scale_ptr).to(tl.float32)
            tl.store(g_ptr + offsets, g.to(DTYPE), mask=mask)
        m, v = _moments(g, m, v, beta1, beta2, MAXIMIZE)
        if AMSGRAD:
            x_ptr = tl.load(x_tab + t).to(tl.pointer_type(DTYPE))
            second = tl.maximum(tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32), v)
            tl.store(x_ptr + offsets, second.to(DTYPE), mask=mask)
        else:
            second = v
        p = _decayed_update(p, m, second, mask, d, tau, lr, bc1, bc2_sqrt, neg_step_size, eps,
                            update_a, update_b, DECAY, UPDATE, CAUTIOUS)

        p_out = p.to(DTYPE)
        tl.store(p_ptr + offsets, p_out, mask=mask)
        tl.store(m_ptr + offsets, m.to(DTYPE), mask=mask)
        tl.store(v_ptr + offsets, v.to(DTYPE), mask=mask)
        if WANT_SUM:
            part = tl.sum(tl.where(mask, tl.abs(p_out.to(tl.float32)), 0.0), axis=0)
            tl.atomic_add(sum_tab + t, part)


_TL_DTYPES = {}
if triton is not None:
    _TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16,
                  torch.float16: tl.float16}


@dataclass(frozen=True)
class _Tables:
    """Device tables of one launch: addresses and sizes per tensor, (tensor, start) per block."""

    pointers: tuple[Tensor, ...]  # p, g, m, v, max_v (int64 addresses)
    numel: Tensor  # int64 per tensor
    numel_f: Tensor  # float32 max(numel, 1) per tensor
    block_tensor: Tensor  # int32 per block
    block_start: Tensor  # int64 per block
    blocks: int


_tables: dict[tuple[int, ...], _Tables] = {}


def _launch_tables(lists: list[list[Tensor]], device: torch.device,
                   block: int = BLOCK) -> _Tables:
    """The tables for these tensors (``block`` elements per program), cached by their
    addresses (a captured graph reuses them)."""
    key = (block, *(t.data_ptr() for xs in lists for t in xs))
    found = _tables.get(key)
    if found is not None:
        return found
    if len(_tables) >= 64:
        _tables.clear()
    params = lists[0]
    sizes = [p.numel() for p in params]
    block_tensor = [i for i, n in enumerate(sizes) for _ in range(triton.cdiv(n, block))]
    block_start = [b * block for n in sizes for b in range(triton.cdiv(n, block))]

    def table(values: list[int], dtype: torch.dtype = torch.int64) -> Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    empty = [0] * len(params)
    made = _Tables(
        pointers=tuple(table([t.data_ptr() for t in xs] if xs else empty) for xs in lists),
        numel=table(sizes),
        numel_f=table([max(n, 1) for n in sizes], torch.float32),
        block_tensor=table(block_tensor or [0], torch.int32),
        block_start=table(block_start or [0]),
        blocks=len(block_tensor),
    )
    _tables[key] = made
    return made


def fused_adamhd_triton(
    *lists: list[Tensor],
    decay,
    amsgrad: bool,
    beta1: float,
    beta2: float,
    lr: float | Tensor,
    weight_decay: float,
    eps: float,
    maximize: bool,
    capturable: bool = False,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    update: tuple[int, float, float] = (0, 1.0, 1.0),
) -> None:
    """``launch`` with the lists (the fields of ``AdamTensors``, in order) and hyperparameters
    spelled out (``update``: ``(kind, a, b)`` as ``adamhd.kernels.spec.update_args`` gives it)."""
    from adamhd.optim.adamhd.step import AdamStep, AdamTensors
    from adamhd.optim.adamhd.update_rules import UpdateRule

    kinds = {code: name for name, code in spec.UPDATE_KINDS.items()}
    kind, a, b = update
    rule = UpdateRule(update=kinds[kind])
    if kinds[kind] == "atan2":
        rule = UpdateRule(update="atan2", atan2_a=a, atan2_b=b)
    elif kinds[kind] == "softplus":
        rule = UpdateRule(update="softplus", softplus_beta=a)
    hyper = AdamStep(decay=decay, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                     weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                     capturable=capturable, update=rule)
    launch(AdamTensors(*lists), hyper, grad_scale=grad_scale, found_inf=found_inf)


def launch(
    tensors: AdamTensors,
    hyper: AdamStep,
    *,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """One step over tensors of one device, one launch per dtype, without host synchronisation.
    The kernel's flags come from ``adamhd.kernels.spec``."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    if not tensors.params:
        return
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, p in enumerate(tensors.params):
        by_dtype.setdefault(p.dtype, []).append(i)
    for index in by_dtype.values():
        part = tensors if len(by_dtype) == 1 else tensors.select(index)
        _step_one_dtype(part, hyper, grad_scale, found_inf)


def next_thresholds(t: AdamTensors, hyper: AdamStep, found: Tensor | None):
    """The step's thresholds per tensor (float32, on device) and, for the adaptive threshold,
    ``mean|p_t|`` per tensor (from the previous step's sums where ``p`` is unchanged); the EMA
    ``delta_mus`` is advanced here (``adamhd.decay.threshold``'s rule, on stacked tensors)."""
    from adamhd.decay import foreach_mean_abs
    from adamhd.decay.threshold import guarded_ema
    from adamhd.kernels import _lookup_abs_means

    decay, params, device = hyper.decay, t.params, t.params[0].device
    if not spec.adaptive(hyper):
        value = math.inf if decay.adaptive or not hyper.decays else float(decay.delta)
        return torch.full((len(params),), value, device=device, dtype=torch.float32), None
    cached = _lookup_abs_means(params)
    stale = [i for i, a in enumerate(cached) if a is None]
    if stale:
        for i, a in zip(stale, foreach_mean_abs([params[i].detach() for i in stale])):
            cached[i] = a
    abs_means = torch.stack([a.reshape(()).to(torch.float32) for a in cached])
    mus = torch.stack([mu.reshape(()) for mu in t.delta_mus])
    new_mus = guarded_ema(mus, abs_means.to(mus.dtype), decay.delta_beta)
    if found is not None:
        new_mus = torch.where(found > 0, mus, new_mus)
    torch._foreach_copy_(t.delta_mus, list(new_mus.unbind()))
    return (new_mus * decay.delta_scale).to(torch.float32), abs_means


def advance_steps(state_steps: list[Tensor], found: Tensor | None) -> Tensor:
    """``step += 1`` except where GradScaler found inf/nan (all on device); the new counts as
    float32, stacked."""
    if found is None:
        torch._foreach_add_(state_steps, 1)
    else:
        torch._foreach_add_(state_steps, [(1 - found).to(s.dtype) for s in state_steps])
    return torch.stack([s.reshape(()) for s in state_steps]).to(torch.float32)


def _step_one_dtype(t: AdamTensors, hyper: AdamStep, grad_scale, found_inf) -> None:
    params, lr = t.params, hyper.lr
    device = params[0].device
    update_kind, update_a, update_b = spec.update_args(hyper)
    reason = spec.update_reason(hyper.update, "cuda")  # the per-tensor options: CPU only
    if reason is not None:
        raise RuntimeError(f"fused AdamHD step impossible: {reason}")
    found = None if found_inf is None else found_inf.reshape(()).to(torch.float32)
    tables = _launch_tables(
        [params, t.grads, t.exp_avgs, t.exp_avg_sqs, t.max_exp_avg_sqs if hyper.amsgrad else []],
        device)

    steps = advance_steps(t.state_steps, found)

    lr_t = lr.reshape(()).to(device=device, dtype=torch.float32) if isinstance(lr, Tensor) else None
    dummy = torch.zeros((), device=device, dtype=torch.float32)
    ds, abs_means = next_thresholds(t, hyper, found)
    sums = dummy if abs_means is None else torch.zeros(
        len(params), device=device, dtype=torch.float32)

    if tables.blocks > 0:
        p_tab, g_tab, m_tab, v_tab, x_tab = tables.pointers
        _adamhd_multi_kernel[(tables.blocks,)](
            p_tab, g_tab, m_tab, v_tab, x_tab, tables.numel, tables.block_tensor,
            tables.block_start, steps, ds, sums,
            lr_t if lr_t is not None else dummy, 0.0 if lr_t is not None else float(lr),
            grad_scale if grad_scale is not None else dummy,
            found if found is not None else dummy,
            hyper.beta1, hyper.beta2, hyper.eps, hyper.weight_decay, update_a, update_b,
            DTYPE=_TL_DTYPES[params[0].dtype], DECAY=spec.decay_kind(hyper), UPDATE=update_kind,
            CAUTIOUS=spec.cautious(hyper), AMSGRAD=hyper.amsgrad,
            MAXIMIZE=hyper.maximize, LR_PTR=lr_t is not None, HAS_SCALE=grad_scale is not None,
            HAS_FOUND=found is not None, WANT_SUM=abs_means is not None, BLOCK_SIZE=BLOCK,
        )
    finish_step(params, tables, sums, abs_means, found)


def finish_step(params: list[Tensor], tables: _Tables, sums: Tensor, abs_means: Tensor | None,
                found: Tensor | None) -> None:
    """After a launch: bump the weights' versions and keep ``mean|p_new|`` (from the kernel's
    ``sums``) for the next step's adaptive threshold (a skipped step keeps the old one)."""
    from adamhd.kernels import _store_abs_means

    torch.autograd.graph.increment_version(params)
    if abs_means is not None:
        means = sums / tables.numel_f
        if found is not None:  # a skipped step keeps the statistic of the unchanged p
            means = torch.where(found > 0, abs_means, means)
        _store_abs_means(params, list(means.unbind()))
