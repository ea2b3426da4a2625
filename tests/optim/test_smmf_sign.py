"""SMMF's sign convention at exactly M = 0, as docs/optimizers.md states it: the sign bit is
``M >= 0`` (the authors' code stores ``M > 0``), so an element whose first moment is exactly 0
decompresses with a + sign and then moves down."""

from __future__ import annotations

import torch

from adamhd import SMMF
from adamhd.optim.smmf import unpack_signs


def test_zero_first_moment_is_stored_as_nonnegative():
    p = torch.nn.Parameter(torch.ones(2, 2, dtype=torch.float64))
    opt = SMMF([p], lr=0.1)
    p.grad = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # M[0, 0] = 0 exactly
    opt.step()
    flags = unpack_signs(opt.state[p]["sign"], 4).reshape(2, 2)
    assert flags.tolist() == [[True, True], [True, True]]
    assert p[0, 0].item() == 1.0  # step 1: M[0, 0] = 0 moves nothing
    p.grad = torch.zeros(2, 2, dtype=torch.float64)
    opt.step()
    # step 2: M[0, 0] decompresses to +r_0*c_0 > 0 (row 0 and column 0 have mass): p decreases
    # (with the authors' M > 0 it would be -r_0*c_0: p would increase)
    assert p[0, 0].item() < 1.0
