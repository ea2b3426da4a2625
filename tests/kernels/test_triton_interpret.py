"""The multi-tensor Triton kernel's math on CPU, through Triton's interpreter (TRITON_INTERPRET=1).

Runs in a subprocess so that TRITON_INTERPRET is set before triton is imported. Skipped when
triton is not installed. (Speed on a GPU is measured by `adamhd bench step`, not here.)
"""

import pytest

from tests.kernels.interpreter import run_interpreted

pytest.importorskip("triton")

CASES = [
    dict(dtype="float32", delta="adaptive", form="explicit", amsgrad=False, maximize=False,
         wd=0.1, steps=4),
    dict(dtype="float32", delta="adaptive", form="proximal", amsgrad=True, maximize=True,
         wd=0.1, steps=4, grad_scale=256),
    dict(dtype="float32", delta=0.3, form="explicit", amsgrad=False, maximize=False, wd=0.0,
         steps=3),
    dict(dtype="bfloat16", delta=0.3, form="proximal", amsgrad=False, maximize=False, wd=0.1,
         steps=3),
    dict(dtype="bfloat16", delta="adaptive", form="explicit", amsgrad=True, maximize=False,
         wd=0.1, steps=3, grad_scale=64),
]


def test_triton_kernel_matches_reference_in_interpreter():
    out = run_interpreted("triton_interpret_check.py", CASES)
    assert out["skipped_step_unchanged"]  # weights, state and gradients
    assert out["mixed_dtypes_equal"]  # one launch per dtype, same as separate calls
    assert out["non_finite_guard"]
    assert out["options_tolerance_used"] < 1  # cautious, L2, atan2, softplus vs float64
    for case, res in zip(CASES, out["results"]):
        assert res["steps"] == [float(case["steps"])] * len(res["steps"])
        assert res["grads_unscaled"]  # written back in the kernel's pass (grad_scale cases)
        if case["dtype"] == "float32":
            assert res["diff"] < 1e-5 and res["mu_diff"] < 1e-6, (case, res)
        else:
            assert res["diff"] < 0.1, (case, res)
