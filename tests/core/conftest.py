import pytest
import torch

from adamhd import kernels


def available_paths() -> list[str]:
    """The implementations AdamHD can select on CPU in this build."""
    paths = ["single", "foreach"]
    if kernels.fused_unsupported_reason(torch.zeros(1)) is None:
        paths.append("fused")
    return paths


def path_kwargs(path: str) -> dict:
    return {
        "single": dict(foreach=False, fused=False),
        "foreach": dict(foreach=True, fused=False),
        "fused": dict(fused=True),
    }[path]


@pytest.fixture(params=available_paths())
def path(request):
    return request.param
