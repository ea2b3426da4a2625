"""GradTail's head-gradient alignment against per-sample autograd on a tiny model (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adamhd import GradTailState, head_gradient_alignment


def tiny_batch(seed: int, n: int = 7, width: int = 6, classes: int = 4):
    """A two-layer model's head input, head weight (leaf) and targets."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    w1 = torch.randn(width, 5, generator=gen, dtype=torch.float64)
    head = torch.randn(classes, width, generator=gen, dtype=torch.float64, requires_grad=True)
    hidden = torch.tanh(x @ w1.T)
    targets = torch.randint(0, classes, (n,), generator=gen)
    return hidden, head, targets


def per_sample_head_grads(hidden, head, targets) -> list[torch.Tensor]:
    """Brute force: one backward per sample, the gradient of its loss w.r.t. the head weight."""
    grads = []
    for i in range(hidden.shape[0]):
        loss = F.cross_entropy((hidden[i : i + 1] @ head.T), targets[i : i + 1])
        grads.append(torch.autograd.grad(loss, head)[0])
    return grads


def reference_scores(grads, running):
    dots = torch.stack([(g * running).sum() for g in grads])
    norms = torch.stack([g.norm() * running.norm() for g in grads])
    return dots, dots / norms


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
def test_matches_per_sample_autograd_over_steps(beta):
    state, running = GradTailState(beta), None
    for step in range(4):
        hidden, head, targets = tiny_batch(seed=10 * step + 1)
        grads = per_sample_head_grads(hidden, head, targets)
        batch_mean = torch.stack(grads).mean(0)
        running = batch_mean if running is None else beta * running + (1 - beta) * batch_mean
        got = head_gradient_alignment(hidden @ head.detach().T, hidden, targets, state)
        dots, cosines = reference_scores(grads, running)
        torch.testing.assert_close(got.dots, dots, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(got.cosines, cosines, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(state.mean, running, rtol=1e-12, atol=1e-14)
        assert state.steps == step + 1


def test_ignored_rows_score_zero_and_stay_out_of_the_mean():
    hidden, head, targets = tiny_batch(seed=21, n=8)
    targets[[1, 5]] = -100
    keep = [i for i in range(8) if i not in (1, 5)]
    grads = per_sample_head_grads(hidden[keep], head, targets[keep])
    running = torch.stack(grads).mean(0)
    got = head_gradient_alignment(hidden @ head.detach().T, hidden, targets, GradTailState())
    dots, cosines = reference_scores(grads, running)
    torch.testing.assert_close(got.dots[keep], dots, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got.cosines[keep], cosines, rtol=1e-12, atol=1e-14)
    assert got.dots[[1, 5]].tolist() == [0.0, 0.0] and got.cosines[[1, 5]].tolist() == [0.0, 0.0]
    # another ignore_index: -100 is then an out-of-range target
    targets[[1, 5]] = 3
    other = head_gradient_alignment(
        hidden @ head.detach().T, hidden, targets, GradTailState(), ignore_index=3
    )
    assert other.dots[[1, 5]].tolist() == [0.0, 0.0]


def test_first_step_dots_average_to_the_squared_mean_norm():
    # G is the batch mean of the g_i, so mean_i <g_i, G> = ||G||^2; cosines lie in [-1, 1]
    hidden, head, targets = tiny_batch(seed=3, n=9)
    state = GradTailState()
    got = head_gradient_alignment(hidden @ head.detach().T, hidden, targets, state)
    assert got.dots.mean().item() == pytest.approx(state.mean.norm().item() ** 2, rel=1e-12)
    assert bool((got.cosines.abs() <= 1 + 1e-12).all())
    assert got.dots.dtype == torch.float64


def test_a_sample_against_the_crowd_scores_negative():
    # six samples agree (same input, same label); the seventh has the opposite input
    hidden = torch.tensor([[1.0, 0.0]] * 6 + [[-1.0, 0.0]], dtype=torch.float64)
    targets = torch.tensor([0] * 6 + [0])
    logits = torch.zeros(7, 3, dtype=torch.float64)
    got = head_gradient_alignment(logits, hidden, targets, GradTailState())
    assert bool((got.cosines[:6] > 0.99).all()) and got.cosines[6].item() < -0.99


def test_float32_and_low_precision_inputs_give_float32_scores():
    hidden, head, targets = tiny_batch(seed=5)
    ref = head_gradient_alignment(hidden @ head.detach().T, hidden, targets, GradTailState())
    logits16 = (hidden @ head.detach().T).to(torch.bfloat16)
    got = head_gradient_alignment(logits16, hidden.to(torch.bfloat16), targets, GradTailState())
    assert got.cosines.dtype == torch.float32
    torch.testing.assert_close(got.cosines.double(), ref.cosines, rtol=0, atol=0.05)


def test_zero_hidden_row_gets_cosine_zero():
    hidden, head, targets = tiny_batch(seed=6)
    hidden[2] = 0.0
    got = head_gradient_alignment(hidden @ head.detach().T, hidden, targets, GradTailState())
    assert got.cosines[2].item() == 0.0 and got.dots[2].item() == 0.0
    assert bool(torch.isfinite(got.cosines).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_resume_from_state_dict_is_exact(dtype):
    batches = [tiny_batch(seed=s) for s in (11, 12, 13)]

    def run(state, items):
        out = []
        for hidden, head, targets in items:
            h = hidden.to(dtype)
            out.append(head_gradient_alignment(h @ head.detach().T.to(dtype), h, targets, state))
        return out

    straight = GradTailState(0.8)
    expected = run(straight, batches)
    first = GradTailState(0.8)
    run(first, batches[:1])
    saved = first.state_dict()
    run(first, batches[1:2])  # moves on after the save: the saved copy must not follow
    resumed = GradTailState(0.1)
    resumed.load_state_dict(saved)
    assert resumed.beta == 0.8 and resumed.steps == 1 and resumed.mean.dtype == dtype
    got = run(resumed, batches[1:])
    for a, b in zip(got, expected[1:]):
        assert torch.equal(a.dots, b.dots) and torch.equal(a.cosines, b.cosines)
    assert torch.equal(resumed.mean, straight.mean) and resumed.steps == straight.steps == 3


def _bad_calls(hidden, logits, targets):
    n = hidden.shape[0]
    yield "empty batch", (logits[:0], hidden[:0], targets[:0])
    yield "batch sizes differ", (logits, hidden[:-1], targets)
    yield "batch sizes differ", (logits, hidden, targets[:-1])
    yield r"targets must lie in \[0, 4\)", (logits, hidden, torch.full((n,), 4))
    yield r"targets must lie in \[0, 4\)", (logits, hidden, torch.full((n,), -1))
    yield "every target is ignore_index=-100", (logits, hidden, torch.full((n,), -100))
    yield "targets must be a 1-D integer", (logits, hidden, targets.double())
    yield "logits must be a 2-D", (logits[0], hidden, targets)
    yield "hidden must be a 2-D", (logits, hidden.long(), targets)
    yield r"state holds a \(4, 6\) average", (logits[:, :3], hidden, targets.clamp_max(2))
    yield r"state holds a \(4, 6\) average", (logits, hidden[:, :5], targets)


def test_bad_inputs_raise_before_the_state_changes():
    hidden, head, targets = tiny_batch(seed=7)
    logits = hidden @ head.detach().T
    state = GradTailState()
    head_gradient_alignment(logits, hidden, targets, state)
    before = state.state_dict()
    for message, args in _bad_calls(hidden, logits, targets):
        with pytest.raises(ValueError, match=message):
            head_gradient_alignment(*args, state)
        assert torch.equal(state.mean, before["mean"]) and state.steps == before["steps"]
    with pytest.raises(TypeError, match="state must be a GradTailState"):
        head_gradient_alignment(logits, hidden, targets, None)


def test_bad_beta_and_bad_state_dicts_raise():
    for beta in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="beta must be in"):
            GradTailState(beta)
    state = GradTailState()
    with pytest.raises(KeyError, match="missing"):
        state.load_state_dict({"beta": 0.9})
    with pytest.raises(ValueError, match="'mean' must be None or a 2-D"):
        state.load_state_dict({"beta": 0.9, "mean": torch.zeros(3), "steps": 1})
    assert state.mean is None and state.steps == 0
