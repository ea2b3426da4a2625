"""The foreach path (torch's fused Adam kernel + clipped pull on CPU) against the reference."""

import math

import pytest
import torch

from tests.kernels.conftest import clone_params, make_params
from tests.kernels.test_fused_cpu import assert_states_close, train

CASES = [
    dict(),
    dict(decay_form="proximal"),
    dict(delta=0.4, amsgrad=True),
    dict(delta=0.4, decay_form="proximal", maximize=True),
    dict(delta=math.inf),
]


@pytest.mark.parametrize("contiguous", [True, False])  # False: the pure foreach fallback
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())
                         or "default")
def test_foreach_matches_reference(dtype, case, contiguous):
    kw = {"lr": 1e-2, "weight_decay": 0.2, **case}
    ref_ps = make_params(dtype, transposed=not contiguous)
    ps = clone_params(ref_ps)
    ref = train(ref_ps, "single", **kw)
    opt = train(ps, "foreach", **kw)
    assert set(opt.paths.values()) == {"foreach"}
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    assert_states_close(opt, ps, ref, ref_ps, **tol)


@pytest.mark.parametrize("form", ["explicit", "proximal"])
def test_foreach_bf16_close_to_fp32(form):
    kw = dict(lr=1e-2, weight_decay=0.2, decay_form=form)
    ps = make_params(torch.bfloat16, shapes=[(7,), (33, 17)], transposed=False)
    ref_ps = clone_params(ps, torch.float32)
    train(ps, "foreach", steps=4, **kw)
    train(ref_ps, "single", steps=4, **kw)
    for a, b in zip(ps, ref_ps):
        torch.testing.assert_close(a.detach().float(), b.detach(), rtol=4e-2, atol=4e-2)
