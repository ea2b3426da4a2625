"""Fused AdamHD step for CUDA tensors, as a Triton kernel (one pass over p, g, m, v per tensor).

Same math as ``adamhd_cpu.cpp`` and the reference path, in fp32 for fp32/bf16/fp16 parameters.
No host synchronisation: the step count, ``lr`` (if a tensor), the threshold, ``grad_scale`` and
``found_inf`` are read by the kernel from device memory, so the step can be captured in a CUDA
graph (``capturable=True``). The adaptive threshold's statistic ``sum|p_new|`` is accumulated by
the kernel (``atomic_add`` per block) while it writes ``p``.

One launch per tensor: a multi-tensor launch (tensor-list metadata in device memory) would save the
per-launch cost on models with many small tensors; it is not written yet.

Without a GPU the kernel's math can be run on CPU tensors with ``TRITON_INTERPRET=1`` (set before
``triton`` is imported); ``tests/kernels/test_triton_interpret.py`` does that.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

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
    def _adamhd_kernel(
        p_ptr, g_ptr, m_ptr, v_ptr, maxv_ptr,
        n_elements,
        step_ptr, lr_ptr, lr_value, d_ptr, d_value, scale_ptr, found_ptr, sum_ptr,
        beta1, beta2, eps, weight_decay,
        DECAY: tl.constexpr,  # 0 none, 1 explicit, 2 proximal
        AMSGRAD: tl.constexpr,
        MAXIMIZE: tl.constexpr,
        LR_PTR: tl.constexpr,
        D_PTR: tl.constexpr,
        HAS_SCALE: tl.constexpr,
        HAS_FOUND: tl.constexpr,
        WANT_SUM: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
    ):
        pid = tl.program_id(0)
        offsets = pid.to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        limit = n_elements
        if HAS_FOUND:  # GradScaler found inf/nan: touch nothing
            limit = tl.where(tl.load(found_ptr) == 0.0, n_elements, 0)
        mask = offsets < limit

        step = tl.load(step_ptr).to(tl.float32)
        if LR_PTR:
            lr = tl.load(lr_ptr).to(tl.float32)
        else:
            lr = lr_value
        if D_PTR:
            d = tl.load(d_ptr).to(tl.float32)
        else:
            d = d_value
        tau = lr * weight_decay
        bc1 = 1.0 - tl.exp(step * tl.log(beta1))
        bc2_sqrt = tl.sqrt(1.0 - tl.exp(step * tl.log(beta2)))
        neg_step_size = -(lr / bc1)

        p = tl.load(p_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        m = tl.load(m_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        if MAXIMIZE:
            g = -g
        if HAS_SCALE:
            g = g / tl.load(scale_ptr).to(tl.float32)

        if DECAY == 1:
            p = p * (1.0 - tau) + (p - tl.minimum(tl.maximum(p, -d), d)) * tau
        m = m + (1.0 - beta1) * (g - m)
        v = v * beta2 + (1.0 - beta2) * g * g
        if AMSGRAD:
            mv = tl.load(maxv_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            mv = tl.maximum(mv, v)
            denom = tl.sqrt(mv) / bc2_sqrt + eps
            tl.store(maxv_ptr + offsets, mv.to(maxv_ptr.dtype.element_ty), mask=mask)
        else:
            denom = tl.sqrt(v) / bc2_sqrt + eps
        p = p + neg_step_size * m / denom
        if DECAY == 2:
            x = p / (1.0 + tau)
            p = x + (x - tl.minimum(tl.maximum(x, -d), d)) * tau

        p_out = p.to(p_ptr.dtype.element_ty)
        tl.store(p_ptr + offsets, p_out, mask=mask)
        tl.store(m_ptr + offsets, m.to(m_ptr.dtype.element_ty), mask=mask)
        tl.store(v_ptr + offsets, v.to(v_ptr.dtype.element_ty), mask=mask)
        if WANT_SUM:
            part = tl.sum(tl.where(mask, tl.abs(p_out.to(tl.float32)), 0.0), axis=0)
            tl.atomic_add(sum_ptr, part)


def fused_adamhd_triton(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    delta_mus: list[Tensor],
    *,
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
) -> None:
    """One step over tensors of one device, without host synchronisation."""
    from adamhd.decay import mean_abs
    from adamhd.kernels import _lookup_abs_means, _store_abs_means

    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    if not params:
        return
    device = params[0].device
    decays = weight_decay != 0
    adaptive = decay.adaptive and decays
    decay_kind = 0 if not decays else (1 if decay.form == "explicit" else 2)
    found = None if found_inf is None else found_inf.reshape(()).to(torch.float32)

    # step += 1, except where GradScaler found inf/nan (all on device)
    if found is None:
        torch._foreach_add_(state_steps, 1)
    else:
        torch._foreach_add_(state_steps, [(1 - found).to(s.dtype) for s in state_steps])

    lr_is_tensor = isinstance(lr, Tensor)
    lr_t = lr.reshape(()).to(device=device, dtype=torch.float32) if lr_is_tensor else None
    dummy = torch.zeros((), device=device, dtype=torch.float32)

    for i, p in enumerate(params):
        n = p.numel()
        d_t = None
        sum_buf = None
        if adaptive:
            a = _lookup_abs_means([p])[0]
            if a is None:
                a = mean_abs(p.detach())
            mu = delta_mus[i]
            new_mu = mu.lerp(a.to(mu.dtype), 1.0 - decay.delta_beta)
            if found is not None:
                new_mu = torch.where(found > 0, mu, new_mu)
            mu.copy_(new_mu)
            d_t = (mu * decay.delta_scale).to(torch.float32)
            sum_buf = torch.zeros((), device=device, dtype=torch.float32)
        d_value = float("inf") if decay.adaptive else float(decay.delta)
        if n > 0:
            grid = (triton.cdiv(n, BLOCK),)
            _adamhd_kernel[grid](
                p, grads[i], exp_avgs[i], exp_avg_sqs[i],
                max_exp_avg_sqs[i] if amsgrad else p,
                n,
                state_steps[i], lr_t if lr_is_tensor else dummy, 0.0 if lr_is_tensor else float(lr),
                d_t if d_t is not None else dummy, d_value,
                grad_scale if grad_scale is not None else dummy,
                found if found is not None else dummy,
                sum_buf if sum_buf is not None else dummy,
                beta1, beta2, eps, weight_decay,
                DECAY=decay_kind, AMSGRAD=amsgrad, MAXIMIZE=maximize, LR_PTR=lr_is_tensor,
                D_PTR=d_t is not None, HAS_SCALE=grad_scale is not None,
                HAS_FOUND=found is not None, WANT_SUM=sum_buf is not None,
                BLOCK_SIZE=BLOCK,
            )
        if sum_buf is not None:
            mean = sum_buf / max(n, 1)
            if found is not None:  # a skipped step keeps the statistic of the unchanged p
                mean = torch.where(found > 0, a.to(mean.dtype), mean)
            torch.autograd.graph.increment_version(p)
            _store_abs_means([p], [mean])
        else:
            torch.autograd.graph.increment_version(p)
