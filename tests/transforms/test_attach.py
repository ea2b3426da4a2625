"""``attach``: order, exclusions, removal, validation, GradScaler, torch.compile."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.testing import CompileCounter

from adamhd import AdamHD, transforms
from adamhd.transforms import AGC
from tests.transforms import reference


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 5, generator=g), torch.randn(6, 3, generator=g)


def backward(model: nn.Module, seed: int = 1, scaler=None) -> None:
    x, y = batch(seed)
    loss = nn.functional.mse_loss(model(x), y)
    (scaler.scale(loss) if scaler is not None else loss).backward()


def grads_after(model, opt, seed=1) -> list[torch.Tensor]:
    """Gradients as the optimizer saw them: SGD(lr=1) moves p by exactly -g."""
    before = [p.detach().clone() for p in model.parameters()]
    backward(model, seed)
    opt.step()
    return [b - p.detach() for b, p in zip(before, model.parameters())]


def raw_grads(seed=1) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    model = make_model()
    backward(model, seed)
    return [p.grad.double() for p in model.parameters()], [p.double() for p in model.parameters()]


def expected(*names_and_options) -> list[torch.Tensor]:
    grads, params = raw_grads()
    out = []
    for g, p in zip(grads, params):
        for name, options in names_and_options:
            g = reference.REFERENCES[name](g, p, **options)
        out.append(g)
    return out


def assert_grads(got, want, rtol=1e-5):
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=rtol, atol=1e-7)


@pytest.mark.parametrize(
    "stages",
    [
        [("centralize", {}), ("normalize", {})],
        [("normalize", {}), ("centralize", {})],
        [("soft_clip", {}), ("agc", {"clip": 0.05}), ("layer_norm_adaptation", {})],
    ],
    ids=["centralize-normalize", "normalize-centralize", "three"],
)
def test_transforms_run_in_the_given_order(stages):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    transforms.attach(opt, *stages)
    assert_grads(grads_after(model, opt), expected(*stages))


def test_order_matters_for_these_inputs():
    a = expected(("centralize", {}), ("normalize", {}))
    b = expected(("normalize", {}), ("centralize", {}))
    assert not torch.allclose(a[0], b[0])


def test_single_transform_with_options_and_instance_form():
    for spec, kwargs in (("agc", {"clip": 0.05}), (AGC(clip=0.05), {})):
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        handle = transforms.attach(opt, spec, **kwargs)
        assert handle.stages[0].transform == AGC(clip=0.05, eps=1e-3)
        assert_grads(grads_after(model, opt), expected(("agc", {"clip": 0.05})))


@pytest.mark.parametrize("exclude", ["2", "2.weight", "tensor"])
def test_exclude_by_module_name_or_tensor(exclude):
    model = make_model()
    head = model[2]
    items = [head.weight] if exclude == "tensor" else [exclude]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    transforms.attach(opt, "agc", clip=0.01, exclude=items, model=model)
    got = grads_after(model, opt)
    grads, _ = raw_grads()
    want = expected(("agc", {}))
    excluded = {2} if exclude != "2" else {2, 3}  # "2" is the module: weight and bias
    for i, (g, w, raw) in enumerate(zip(got, want, grads)):
        torch.testing.assert_close(g.double(), raw if i in excluded else w, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(want[2], grads[2])  # the exclusion is visible


def test_remove_and_context_manager():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    with transforms.attach(opt, "normalize"):
        assert_grads(grads_after(model, opt), expected(("normalize", {})))
    assert not opt._optimizer_step_pre_hooks
    opt.zero_grad()
    model_plain = make_model()
    model_plain.load_state_dict(model.state_dict())
    grads = grads_after(model, opt)
    backward(model_plain)
    assert_grads(grads, [p.grad.double() for p in model_plain.parameters()])


def test_groups_added_after_attach_and_params_without_grads():
    model = make_model()
    frozen = nn.Parameter(torch.randn(4, 4))
    opt = torch.optim.SGD(model[0].parameters(), lr=1.0)
    transforms.attach(opt, "normalize")
    opt.add_param_group({"params": [*model[2].parameters(), frozen]})
    before = frozen.detach().clone()
    got = grads_after(model, opt)
    want = expected(("normalize", {}))
    assert_grads([got[0], got[1], got[2], got[3]], want)
    assert frozen.grad is None and torch.equal(frozen.detach(), before)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda o, m: transforms.attach(o, "nope"), ValueError, "unknown transform 'nope'"),
        (lambda o, m: transforms.attach(o, "agc", clip=-1), ValueError, "clip must be"),
        (lambda o, m: transforms.attach(o, "agc", clp=1), TypeError, "transform 'agc'"),
        (lambda o, m: transforms.attach(o, "agc", "normalize", clip=1), TypeError, "several"),
        (lambda o, m: transforms.attach(o, ("agc", 1)), TypeError, "a transform is"),
        (lambda o, m: transforms.attach(o), ValueError, "at least one"),
        (lambda o, m: transforms.attach(o, "agc", exclude=["0"]), ValueError, "model="),
        (lambda o, m: transforms.attach(o, "agc", exclude=["x"], model=m), ValueError, "matches"),
        (lambda o, m: transforms.attach(o, "agc", exclude=[3], model=m), TypeError, "exclude"),
        (lambda o, m: transforms.attach(o, AGC(), clip=2), TypeError, "constructor"),
        (lambda o, m: transforms.attach(o, ("agc", {}), clip=2), TypeError, "either"),
        (lambda o, m: transforms.attach(m, "agc"), TypeError, "torch.optim.Optimizer"),
    ],
)
def test_bad_attach_raises_and_registers_nothing(call, error, match):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    with pytest.raises(error, match=match):
        call(opt, model)
    assert not opt._optimizer_step_pre_hooks


def test_grad_scaler_fused_optimizer_without_unscale_raises_before_any_change():
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    transforms.attach(opt, "agc")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    backward(model, scaler=scaler)
    weights = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match=r"scaler\.unscale_\(optimizer\)"):
        scaler.step(opt)
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters()))
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert not opt.state


@pytest.mark.parametrize("fused", [True, False])
def test_grad_scaler_transforms_see_unscaled_gradients(fused):
    """With unscale_ first (fused), or through scaler.step's own unscale_ (for-loop), the run
    equals the same run without a scaler (the scale is a power of 2: unscaling is exact)."""

    def run(use_scaler: bool):
        model = make_model()
        opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=fused)
        transforms.attach(opt, ("centralize", {}), ("agc", {}))
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, enabled=use_scaler)
        for seed in range(3):
            backward(model, seed, scaler=scaler)
            if use_scaler and fused:
                scaler.unscale_(opt)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
        return [p.detach() for p in model.parameters()]

    for a, b in zip(run(True), run(False)):
        assert torch.equal(a, b)


def test_works_with_adamhd_single_and_foreach():
    for foreach in (False, True):
        model = make_model()
        ref_model = copy.deepcopy(model)
        opt = AdamHD(model.parameters(), lr=0.05, foreach=foreach, fused=False)
        ref = AdamHD(ref_model.parameters(), lr=0.05, foreach=foreach, fused=False)
        transforms.attach(opt, "soft_clip")
        for seed in range(3):
            backward(model, seed)
            backward(ref_model, seed)
            transforms.soft_clip(ref_model.parameters())
            opt.step()
            ref.step()
            opt.zero_grad()
            ref.zero_grad()
        for a, b in zip(model.parameters(), ref_model.parameters()):
            assert torch.equal(a, b)


@pytest.mark.parametrize("stages", [[("centralize", {}), ("agc", {})], [("normalize", {})]])
def test_compiled_step_with_attached_transforms_equals_eager(stages):
    def train(compiled: bool):
        torch._dynamo.reset()
        model = make_model()
        opt = AdamHD(model.parameters(), lr=0.05, foreach=True, fused=False)
        transforms.attach(opt, *stages)
        counter = CompileCounter()
        step = torch.compile(opt.step, backend=counter) if compiled else opt.step
        for seed in range(3):
            backward(model, seed)
            step()
            opt.zero_grad()
        return [p.detach() for p in model.parameters()], counter.frame_count

    (got, frames), (want, _) = train(True), train(False)
    assert frames >= 1
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="inductor on CPU needs a C++ compiler")
def test_inductor_compiled_step_with_attached_transforms_equals_eager():
    def train(step_of):
        torch._dynamo.reset()
        model = make_model()
        opt = AdamHD(model.parameters(), lr=0.05, foreach=True, fused=False)
        transforms.attach(opt, ("centralize", {}), ("agc", {}))
        step = step_of(opt)
        for seed in range(3):
            backward(model, seed)
            step()
            opt.zero_grad()
        return [p.detach() for p in model.parameters()]

    got = train(lambda opt: torch.compile(opt.step, backend="inductor"))
    for a, b in zip(got, train(lambda opt: opt.step)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
