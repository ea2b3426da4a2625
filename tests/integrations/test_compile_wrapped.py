"""torch.compile of a wrapped optimizer's step (``with_decoupled_decay`` and its presets): the
compiled step must leave the same weights and the same state as the eager one, the base's state
(momentum buffers, moments) included."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from adamhd import AdafactorHD, MuonHD, NAdamHD, RAdamHD, with_decoupled_decay

CASES = {
    "NAdamHD": (NAdamHD, dict(lr=1e-2, weight_decay=0.1)),
    "RAdamHD": (RAdamHD, dict(lr=1e-2, weight_decay=0.1)),
    "AdafactorHD": (AdafactorHD, dict(lr=1e-2, weight_decay=0.1)),
    "MuonHD": (MuonHD, dict(lr=1e-2, weight_decay=0.1)),
    "SGD": (with_decoupled_decay(torch.optim.SGD), dict(lr=1e-2, momentum=0.9, weight_decay=0.1)),
    "Adam": (with_decoupled_decay(torch.optim.Adam), dict(lr=1e-2, weight_decay=0.1)),
    "Adam-proximal-cautious": (
        with_decoupled_decay(torch.optim.Adam),
        dict(lr=1e-2, weight_decay=0.1, decay_form="proximal", cautious_decay=True),
    ),
}


def run(cls, kwargs, compiled, steps=2):
    """``steps`` steps on two 2-D weights; the weights and the state after each step."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3, generator=gen)) for _ in range(2)]
    grads = [[torch.randn(4, 3, generator=gen) for _ in params] for _ in range(steps)]
    opt = cls(params, **kwargs)
    step = torch.compile(opt.step, backend="aot_eager") if compiled else opt.step
    history = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        step()
        history.append((
            [p.detach().clone() for p in params],
            [{k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
             for p in params],
        ))
    return history


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_step_equals_eager_weights_and_state(name):
    cls, kwargs = CASES[name]
    torch._dynamo.reset()
    eager = run(cls, kwargs, compiled=False)
    compiled = run(cls, kwargs, compiled=True)
    for t, ((w_e, s_e), (w_c, s_c)) in enumerate(zip(eager, compiled)):
        for a, b in zip(w_e, w_c):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=f"weights, step {t + 1}")
        for a, b in zip(s_e, s_c):
            assert sorted(b) == sorted(a), f"state keys after step {t + 1}: {sorted(b)}"
            for key in a:
                torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7,
                                           msg=f"state {key!r}, step {t + 1}")
