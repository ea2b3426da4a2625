"""torch.optim conventions users rely on."""

import math

import pytest
import torch
from torch import nn

from adamhd import AdamHD
from tests.core.conftest import available_paths, path_kwargs


@pytest.mark.parametrize("path", available_paths())
@pytest.mark.parametrize("form", ["explicit", "proximal"])
def test_zero_lr_changes_no_weight(path, form):
    p = torch.randn(10, 4, requires_grad=True)
    before = p.detach().clone()
    opt = AdamHD([p], lr=0.0, weight_decay=0.5, decay_form=form, **path_kwargs(path))
    for _ in range(3):
        p.grad = torch.randn_like(p)
        opt.step()
    assert torch.equal(p.detach(), before)


@pytest.mark.parametrize("path", available_paths())
def test_tensor_lr_equals_float_lr(path):
    torch.manual_seed(0)
    a = torch.randn(12, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    # foreach takes a Tensor lr only with capturable=True, as torch's AdamW (test_torch_inputs)
    extra = dict(capturable=True) if path == "foreach" else {}
    opt_a = AdamHD([a], lr=torch.tensor(0.01), weight_decay=0.3, **path_kwargs(path), **extra)
    opt_b = AdamHD([b], lr=0.01, weight_decay=0.3, **path_kwargs(path))
    for _ in range(5):
        g = torch.randn(12)
        a.grad, b.grad = g, g.clone()
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_scheduler_scales_the_decay_like_adamw():
    """With zero gradients only the decay moves p, and it follows the scheduled lr."""
    p = torch.tensor([0.5, -0.5, 4.0], requires_grad=True)
    opt = AdamHD([p], lr=0.1, weight_decay=0.5, delta=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: [1.0, 0.5, 0.0][min(t, 2)])
    expected = p.detach().clone()
    for lr in (0.1, 0.05, 0.0):
        p.grad = torch.zeros(3)
        opt.step()
        sched.step()
        tau = lr * 0.5
        expected = expected - tau * expected.clamp(-1.0, 1.0)
        torch.testing.assert_close(p.detach(), expected)


def test_grad_scaler_skipped_step_changes_nothing():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = AdamHD(model.parameters(), lr=1e-2, weight_decay=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    x = torch.randn(8, 4)
    for _ in range(2):
        opt.zero_grad()
        scaler.scale(model(x).pow(2).mean()).backward()
        scaler.step(opt)
        scaler.update()
    weights = [p.detach().clone() for p in model.parameters()]
    state = {k: v.clone() for p in model.parameters() for k, v in opt.state[p].items()}
    opt.zero_grad()
    scaler.scale(model(x).pow(2).mean()).backward()
    model.weight.grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**7  # the scaler saw the inf and skipped
    for w, p in zip(weights, model.parameters()):
        assert torch.equal(w, p.detach())
    after = {k: v for p in model.parameters() for k, v in opt.state[p].items()}
    for k, v in state.items():
        assert torch.equal(v, after[k]), k


def test_closure_and_zero_grad():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = AdamHD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 3), torch.randn(32, 1)

    def closure():
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        return loss

    first = opt.step(closure)
    for _ in range(30):
        last = opt.step(closure)
    assert isinstance(first, torch.Tensor) and last < first
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_params_without_grad_are_untouched():
    a = torch.randn(3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    before = b.detach().clone()
    opt = AdamHD([a, b], lr=0.1)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b.detach(), before) and b not in opt.state


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtypes_keep_state_in_parameter_dtype(dtype):
    p = torch.randn(8, 8, dtype=dtype, requires_grad=True)
    opt = AdamHD([p], lr=1e-2)
    p.grad = torch.randn_like(p)
    opt.step()
    state = opt.state[p]
    assert state["exp_avg"].dtype == dtype and p.dtype == dtype
    assert state["delta_mu"].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.isfinite(p).all()


def test_differentiable_step_gradient_matches_finite_differences():
    """differentiable=True: d(loss after one step)/d(initial weights), checked with gradcheck."""

    def one_step(w0):
        p = w0.clone()
        opt = AdamHD([p], lr=0.1, weight_decay=0.3, delta="adaptive", differentiable=True)
        p.grad = torch.sin(w0)  # a gradient that depends on w0
        opt.step()
        return p

    w0 = torch.tensor([0.3, -1.2, 2.5, 0.01], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(one_step, (w0,), eps=1e-6, atol=1e-5)


def test_compiled_training_step_matches_eager():
    torch.manual_seed(0)
    eager = nn.Linear(5, 3)
    compiled_model = nn.Linear(5, 3)
    compiled_model.load_state_dict(eager.state_dict())
    opt_e = AdamHD(eager.parameters(), lr=1e-2, weight_decay=0.1)
    opt_c = AdamHD(compiled_model.parameters(), lr=1e-2, weight_decay=0.1)

    @torch.compile(fullgraph=False)
    def compiled_step():
        opt_c.step()

    x = torch.randn(16, 5)
    for _ in range(4):
        for model, opt, fn in ((eager, opt_e, opt_e.step), (compiled_model, opt_c, compiled_step)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            fn()
    for a, b in zip(eager.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_explicit_and_proximal_agree_at_small_tau():
    """At usual tau both forms are nearly equal (they differ at order tau * lr)."""
    torch.manual_seed(0)
    a = torch.randn(100, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    opt_a = AdamHD([a], lr=1e-3, weight_decay=1e-2, decay_form="explicit")
    opt_b = AdamHD([b], lr=1e-3, weight_decay=1e-2, decay_form="proximal")
    for _ in range(10):
        g = torch.randn(100)
        a.grad, b.grad = g, g.clone()
        opt_a.step()
        opt_b.step()
    diff = (a - b).abs().max().item()
    assert 0 < diff < 1e-6


def test_decay_pulls_large_weights_less_than_adamw_over_training():
    """The point of the method: large weights keep more of their size than under AdamW."""
    w = torch.tensor([0.01, 3.0], requires_grad=True)
    v = w.detach().clone().requires_grad_()
    ours = AdamHD([w], lr=0.1, weight_decay=0.1, delta=0.1)
    adamw = torch.optim.AdamW([v], lr=0.1, weight_decay=0.1)
    for _ in range(50):
        w.grad, v.grad = torch.zeros(2), torch.zeros(2)
        ours.step()
        adamw.step()
    assert w[1].item() == pytest.approx(3.0 - 50 * 0.01 * 0.1, rel=1e-5)  # float32 sums
    assert v[1].item() == pytest.approx(3.0 * (1 - 0.01) ** 50)
    assert math.isclose(w[0].item(), v[0].item(), rel_tol=1e-6)
