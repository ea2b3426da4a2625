"""The low-bit Triton kernel (``adamhd.kernels.triton_lowbit``, issue 19) on CPU through Triton's
interpreter, against the reference working-copy path; and the CUDA dispatch decision.

The interpreter runs in a subprocess (TRITON_INTERPRET must be set before triton is imported;
ADAMHD_FUSED_DEFAULT=0 there keeps the CPU extension from loading). Speed on a GPU: not measured.
"""

import pytest
import torch

from adamhd.kernels import spec
from adamhd.optim.adamhd import lowbit
from adamhd.optim.adamhd.optimizer import lowbit_kernel
from tests.kernels.interpreter import run_interpreted

CASES = [
    dict(dtype="float32", state_dtype="int8", delta="adaptive", steps=3),
    dict(dtype="float32", state_dtype="bfloat16", decay="l2", decay_form="proximal",
         cautious_decay=True, maximize=True, rounding_seed=11, steps=3),
    dict(dtype="bfloat16", state_dtype="int8", bf16_stochastic_round=True, delta=0.05,
         lr_tensor=3e-3, steps=3),
    dict(dtype="float16", state_dtype="int8", weight_decay=0.0, steps=2),
    dict(dtype="bfloat16", state_dtype="bfloat16", rounding_seed=7, delta="adaptive",
         cautious_decay=True, steps=2),
]


@pytest.fixture(scope="module")
def interpreted():
    pytest.importorskip("triton")
    return run_interpreted("triton_lowbit_check.py", CASES, ADAMHD_FUSED_DEFAULT="0")


@pytest.mark.parametrize("index", range(len(CASES)))
def test_kernel_agrees_with_the_reference_path(interpreted, index):
    case, res = CASES[index], interpreted["cases"][index]
    assert res["steps_equal"] and res["mu_rel"] < 1e-5, res
    if case["dtype"] == "float32":
        assert res["weight_tol_used"] < 1, res  # allclose(rtol=1e-5, atol=1e-6)
    else:
        equal, total = res["weight_equal"]
        assert res["weight_within_ulp"] and equal >= 0.99 * total, res
    assert res["within_one_step"], res  # moments: at most one code step apart
    equal, total = res["equal"]
    assert total > 0 and equal >= 0.99 * total, res  # ... in under 1% of the elements
    assert res["scale_rel"] < 1e-5, res


def test_codes_scales_and_noise_are_the_references_bit_for_bit(interpreted):
    """Where the float step is exact on both paths (beta1 = beta2 = 0, first step: m = g,
    v = g*g), every stored byte is the reference's: codes, scales, stochastic bf16 rounding
    (seed 7 and 2**32 - 1, positions, streams, element indices across blocks)."""
    assert interpreted["exact"] == {"int8": True, "bf16 seed 7": True, "bf16 params": True}
    assert interpreted["param_rounding_equal"] >= 0.99  # bf16 weights, stream 2


def test_grad_scaler_and_resume(interpreted):
    assert interpreted["grad_scaler"] == {"scaled_equal": True, "grads_unscaled": True,
                                          "skip_unchanged": True}
    assert interpreted["resume_exact"]


def test_refusals_before_anything_changes(interpreted):
    out = interpreted["refusals"]
    assert out["cpu_ok_interpreting"]
    assert "torch.float64" in out["float64"]
    assert "contiguous" in out["strided"]
    assert "exp_avg_scale of parameter 0 must be 3 float32 values" in out["bad_scale"]
    assert out["bad_scale_unchanged"]


def test_cuda_dispatch_takes_the_triton_kernel():
    """CUDA groups with low-bit states are fused-eligible (spec) and routed to the Triton
    kernel; CPU groups to the C++ op; without a CUDA device (and not interpreting) the Triton
    kernel's reason says so."""
    from adamhd.kernels import lowbit as cpu_lowbit
    from adamhd.kernels import triton_adamhd, triton_lowbit

    assert triton_lowbit.LOW_BLOCK == lowbit.BLOCK
    for dtype in ("float32", "bfloat16", "int8"):
        assert spec.state_reason({"state_dtype": dtype}, "cuda") is None
    assert spec.state_reason({"state_dtype": "int8", "bf16_stochastic_round": True}, "cuda") \
        is None
    assert lowbit_kernel("cuda") == (triton_lowbit.lowbit_reason, triton_lowbit.lowbit_step)
    assert lowbit_kernel("cpu") == (cpu_lowbit.fused_lowbit_reason, cpu_lowbit.fused_lowbit_step)
    if not torch.cuda.is_available() and not triton_adamhd.interpreting():
        reason = triton_lowbit.lowbit_reason({"state_dtype": "int8"}, [torch.zeros(3)])
        assert reason is not None and ("CUDA" in reason or "Triton" in reason)
