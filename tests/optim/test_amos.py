"""Amos (arXiv 2210.11693) against the float64 reference of ``tests/optim/reference.py``, written
from Algorithm 1 (and the jestimator reference code's order of operations), with its shared
per-tensor second moment, the decay schedule ``b``, the default ``eta``, the cautious mask and
``maximize``. (The shared harness also runs it: ``tests/optim/common.py``.)"""

from __future__ import annotations

import math

import pytest
import torch

from adamhd import Amos
from tests.optim import reference

F64 = torch.float64
SHAPES = [(6, 4), (3, 2, 5), (7,)]


def params64(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=F64).requires_grad_() for s in SHAPES]


def grad(t, i, shape):
    g = torch.Generator().manual_seed(10 * t + i)
    return torch.randn(shape, generator=g, dtype=F64) * (0.5 + i)


def amos64(steps, xi, beta, etas, extra_l2=0.0, cautious=False, maximize=False):
    """``tests.optim.reference.amos`` on each tensor (Amos's tensors are independent)."""
    out = [reference.amos(p.detach(), [grad(t, i, p.shape) for t in range(1, steps + 1)], xi,
                          beta, etas[i], extra_l2, cautious, maximize)
           for i, p in enumerate(params64())]
    return ([p for p, _ in out], [s["amos_v"] for _, s in out], [s["amos_b"] for _, s in out])


@pytest.mark.parametrize("options", [
    dict(),
    dict(eta=0.3, weight_decay=0.02),
    dict(cautious_decay=True, maximize=True),
])
def test_amos_is_algorithm_1(options):
    params = params64()
    opt = Amos(params, lr=0.08, beta=0.9, **options)
    for t in range(1, 7):
        for i, p in enumerate(params):
            p.grad = grad(t, i, p.shape)
        opt.step()
    # default eta: 1/sqrt(fan_in) for 2+ dims, 1 for vectors
    etas = [options.get("eta", e) for e in (1 / math.sqrt(4), 1 / math.sqrt(10), 1.0)]
    want, v, b = amos64(6, 0.08, 0.9, etas, options.get("weight_decay", 0.0),
                        options.get("cautious_decay", False), options.get("maximize", False))
    for i, p in enumerate(params):
        torch.testing.assert_close(p.detach(), want[i], rtol=1e-12, atol=1e-14)
        assert float(opt.state[p]["amos_v"]) == pytest.approx(v[i], rel=1e-12)
        assert float(opt.state[p]["amos_b"]) == pytest.approx(b[i], rel=1e-12)
        assert opt.state[p]["amos_v"].dim() == 0  # one number per tensor: memory-light
    assert min(b) > 0.01  # the schedule moved: d < 1 on the last steps, the test can fail
