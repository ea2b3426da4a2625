"""Peers implementing the same transforms (tests skip when they are not installed).

* timm ``adaptive_clip_grad``: equal (timm keeps ``g`` where ``||g|| < limit``, we clip where
  ``||g|| > limit``: the same except at equality, where both factors are 1 unless
  ``||g|| < 1e-6``).
* pytorch_optimizer ``agc``: equal for 0/1/2/4-D tensors; for 3-D ones its unit norm is over
  dim 1 only (per row *and* last index), not over all dims but 0 as the paper, timm and we do.
* pytorch_optimizer ``centralize_gradient``: equal.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from adamhd import transforms

SHAPES = [(), (7,), (6, 5), (4, 3, 2), (3, 2, 2, 2)]


def timm_agc_module():
    """timm/utils/agc.py alone: importing the ``timm`` package also imports torchvision, which
    need not load in this environment (a CPU torch with a CUDA torchvision wheel)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("timm is not installed")
    path = Path(spec.submodule_search_locations[0]) / "utils" / "agc.py"
    if not path.exists():
        pytest.skip("this timm has no utils/agc.py")
    file_spec = importlib.util.spec_from_file_location("timm_utils_agc_only", path)
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def pair(shape, seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(shape, generator=g).requires_grad_()
    p.grad = torch.randn(shape, generator=g) * torch.rand((), generator=g) * 0.1
    return p


def clone(p):
    q = p.detach().clone().requires_grad_()
    q.grad = p.grad.clone()
    return q


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("clip", [0.01, 0.05])
def test_agc_equals_timm(shape, clip):
    timm_agc = timm_agc_module()
    params = [pair(shape, seed) for seed in range(4)]
    theirs = [clone(p) for p in params]
    timm_agc.adaptive_clip_grad(theirs, clip_factor=clip, eps=1e-3)
    transforms.agc(params, clip=clip, eps=1e-3)
    for a, b in zip(params, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0)


def test_agc_against_pytorch_optimizer():
    po_agc = pytest.importorskip("pytorch_optimizer.optimizer.agc")
    for shape in SHAPES:
        p = pair(shape, 5)
        theirs = po_agc.agc(p.detach(), p.grad.clone(), agc_eps=1e-3, agc_clip_val=0.01)
        transforms.agc(p)
        if len(shape) == 3:  # its unit is dim 1 only: a different clip
            assert not torch.allclose(p.grad, theirs)
        else:
            torch.testing.assert_close(p.grad, theirs, rtol=1e-6, atol=0)


def test_centralize_equals_pytorch_optimizer():
    po_gc = pytest.importorskip("pytorch_optimizer.optimizer.gradient_centralization")
    for shape in SHAPES:
        p = pair(shape, 6)
        theirs = p.grad.clone()
        po_gc.centralize_gradient(theirs, gc_conv_only=False)
        transforms.centralize(p)
        torch.testing.assert_close(p.grad, theirs, rtol=1e-6, atol=1e-8)
