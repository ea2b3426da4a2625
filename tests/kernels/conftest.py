import pytest
import torch

from adamhd.kernels import cpu


@pytest.fixture(scope="session")
def cpu_kernel():
    """The compiled CPU extension (built on first use, about a minute); skip if unavailable."""
    module = cpu.load()
    if module is None:
        pytest.skip(f"fused CPU kernel unavailable: {cpu.build_error()}")
    return module


SHAPES = [(0,), (), (7,), (33, 17), (5, 4, 3), (70001,)]


def make_params(dtype=torch.float32, shapes=SHAPES, seed=0, transposed=True):
    """Parameters of many shapes; one of them non-contiguous (a transposed view's layout)."""
    g = torch.Generator().manual_seed(seed)
    ps = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]
    if transposed:
        ps.append(torch.randn(9, 13, generator=g, dtype=torch.float64).to(dtype).t())
        ps.append(torch.randn(12, 10, generator=g, dtype=torch.float64).to(dtype)[:, ::2])
    return [torch.nn.Parameter(p) for p in ps]


def clone_params(ps, dtype=None):
    return [torch.nn.Parameter(p.detach().clone().to(dtype or p.dtype)) for p in ps]


def grads_for(ps, gen, scale=1.0):
    return [(torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale) for p in ps]
