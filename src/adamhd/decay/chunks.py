"""Chunk-by-chunk execution of the decay formulas on CPU: an execution detail, not math.

A decay formula applied to a whole tensor allocates weight-sized temporaries (``|p|`` for
``mean|p|``, the clipped pull, the cautious mask). On CPU each of them streams through main memory
once more, and torch's CPU allocator hands such large blocks back to the operating system, so
every step pays a page fault per 4 KiB page of every temporary as well. Applied to flat chunks of
``CHUNK_ELEMENTS`` elements instead, the *same* formula's temporaries are a few hundred KiB: they
stay in the core's L2 cache and malloc recycles them, so the decay costs about one read and write
of ``p`` (and the adaptive threshold one read more), as the paper's "O(1) extra cost" means.

Elementwise formulas give the same bits on a chunk as on the whole tensor (every element's result
depends on that element's inputs only; ``tests/decay/test_chunks.py`` checks every rule, form and
cautious combination across chunk boundaries). ``sweep`` splits only where that is safe and
useful: CPU tensors of torch's own ``Tensor``/``Parameter`` types (not DTensor or other
subclasses, whose ops go through their own dispatch), contiguous, larger than one chunk, with no
autograd recording (``differentiable=True``) and not under ``torch.compile``; otherwise the
formula runs once on the whole tensors, as before.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["CHUNK_ELEMENTS", "SUM_CHUNK_ELEMENTS", "SUM_SPLIT_ABOVE", "chunks", "splits", "sweep"]

#: Elements per chunk of an elementwise formula: 256 KiB of float32, so a chunk and its few
#: temporaries stay in L2; a multiple of every vector width.
CHUNK_ELEMENTS = 1 << 16
#: Elements per chunk of a reduction (``sum|p|``): its one buffer is reused, longer ops cost less.
SUM_CHUNK_ELEMENTS = 1 << 18
#: A reduction splits tensors larger than this: below it, one whole-tensor ``|p|`` stays in cache
#: and one op beats many (measured: even at 1M elements, split from 2M).
SUM_SPLIT_ABOVE = 1 << 20

_PLAIN_TYPES = (Tensor, torch.nn.Parameter)


def splits(*tensors: Tensor | None, above: int | None = None) -> bool:
    """Whether ``sweep`` over these tensors runs chunk by chunk (see the module docstring):
    tensors of more than ``above`` elements (default ``CHUNK_ELEMENTS``)."""
    present = [t for t in tensors if t is not None]
    if not present:
        return False
    numel = present[0].numel()
    if numel <= (CHUNK_ELEMENTS if above is None else above) or torch.compiler.is_compiling():
        return False
    recording = torch.is_grad_enabled()
    return all(
        type(t) in _PLAIN_TYPES
        and t.is_cpu
        and t.numel() == numel
        and t.is_contiguous()
        and not (recording and t.requires_grad)
        for t in present
    )


def chunks(t: Tensor, size: int | None = None) -> tuple[Tensor, ...]:
    """Views of the flat ``t`` (contiguous), ``size`` (default ``CHUNK_ELEMENTS``) elements each,
    the last shorter."""
    return t.view(-1).split(CHUNK_ELEMENTS if size is None else size)


def sweep(fn: Callable[..., None], *tensors: Tensor | None) -> None:
    """``fn(*tensors)``, run on aligned chunks of the tensors where ``splits(*tensors)``.

    ``fn`` must be elementwise (each output element depends only on the same element of its
    inputs) and update its tensors in place; ``None`` arguments are passed through as ``None``.
    """
    if not splits(*tensors):
        fn(*tensors)
        return
    per_tensor = [None if t is None else chunks(t) for t in tensors]
    count = len(next(c for c in per_tensor if c is not None))
    for i in range(count):
        fn(*(None if c is None else c[i] for c in per_tensor))
