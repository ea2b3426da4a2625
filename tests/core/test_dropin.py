"""AdamHD as a drop-in for torch.optim.AdamW: what AdamW accepts (Tensor lr/betas, positional
arguments, its checkpoints) AdamHD accepts the same way, and what AdamW rejects it rejects."""

import inspect
import math
import re
import warnings

import pytest
import torch

from adamhd import AdamHD
from tests.core.conftest import available_paths, path_kwargs

T = torch.tensor


def sample_param():
    return torch.nn.Parameter(torch.randn(2, 3))


# ------------------------------------------------------------------------------------------------
# item 2: Tensor lr and betas, as torch's OptimizerInfo for AdamW exercises them
# ------------------------------------------------------------------------------------------------


# The constructions torch 2.13's test suite expects AdamW to refuse on CPU
# (torch/testing/_internal/common_optimizers.py, optim_error_inputs_func_adam and
# get_error_inputs_for_all_optims), as (params, kwargs, error type, message pattern).
P1, P2 = (torch.nn.Parameter(torch.randn(1, 1)) for _ in range(2))
TORCH_ERROR_INPUTS = [
    (P1, {}, TypeError, "params argument given to the optimizer should be an iterable"),
    ([P1, P1], {}, UserWarning, ".*a parameter group with duplicate parameters.*"),
    ([{"params": P1}, {"params": P1}], {}, ValueError,
     "some parameters appear in more than one parameter group"),
    (None, dict(lr=T([0.001, 0.001])), ValueError, "Tensor lr must be 1-element"),
    ([("weight", P1), P2], {}, ValueError, "all optimizer params should be with/without names"),
    (None, dict(lr=1e-2, betas=(1.0, 0.0)), ValueError, "Invalid beta parameter at index 0: 1.0"),
    (None, dict(lr=1e-2, weight_decay=-1), ValueError, "Invalid weight_decay value: -1"),
    (None, dict(lr=T(0.001), foreach=True), ValueError,
     "lr as a Tensor is not supported for capturable=False and foreach=True"),
    (None, dict(lr=1e-2, betas=(0.9, T(0.99))), ValueError,
     "betas must be either both floats or both Tensors"),
    (None, dict(lr=1e-2, betas=(T(0.9), 0.99)), ValueError,
     "betas must be either both floats or both Tensors"),
    (None, dict(lr=1e-2, betas=(T(0.9), T(0.99)), foreach=True), ValueError,
     r"betas\[0\] as a Tensor is not supported for capturable=False and foreach=True"),
    (None, dict(lr=1e-2, betas=(T(0.9), T(0.99)), foreach=True), ValueError,
     r"betas\[0\] as a Tensor is not supported for capturable=False and foreach=True"),
]


@pytest.mark.parametrize("params, kwargs, error, pattern", TORCH_ERROR_INPUTS)
def test_torch_error_inputs_raise_the_same_error(params, kwargs, error, pattern):
    """Every construction torch's test suite expects AdamW to refuse, AdamHD refuses alike."""
    for optimizer in (torch.optim.AdamW, AdamHD):  # the table is right for torch, and for us
        params_ = params if params is not None else [sample_param()]
        if error is UserWarning:
            with pytest.warns(UserWarning, match=pattern):
                optimizer(params_, **kwargs)
            continue
        with pytest.raises(error, match=pattern):
            optimizer(params_, **kwargs)


# The construction arguments torch's OptimizerInfo gives AdamW (optim_inputs_func_adam): on
# accelerators, Tensor lr and betas with capturable, 3-d betas among them (capturable runs on CPU
# here); then Tensor combinations AdamW takes on CPU without capturable.
TORCH_INPUTS = [
    {},
    dict(lr=0.01),
    dict(weight_decay=0.1),
    dict(weight_decay=0.1, maximize=True),
    dict(weight_decay=0.1, amsgrad=True),
    dict(capturable=True),
    dict(weight_decay=0.1, amsgrad=True, capturable=True),
    dict(lr=T(0.001), amsgrad=True, capturable=True),
    dict(lr=T(0.001), betas=(T([[[0.9]]]), T([[0.99]])), amsgrad=True, capturable=True),
    dict(lr=T(0.001), betas=(T(0.9), T(0.99)), amsgrad=False, capturable=True),
]
CPU_TENSOR_INPUTS = [
    dict(lr=T(0.01)),
    dict(betas=(T(0.9), T(0.99))),
    dict(lr=T(0.01), betas=(T(0.9), T(0.99)), amsgrad=True),
    dict(lr=T([0.01]), betas=(T([[[0.8]]]), T([[0.95]])), maximize=True),
]


def _floats(kwargs):
    """The same hyperparameters as Python numbers."""
    out = dict(kwargs)
    if isinstance(out.get("lr"), torch.Tensor):
        out["lr"] = out["lr"].item()
    if "betas" in out:
        out["betas"] = tuple(float(b) for b in out["betas"])
    return out


def _run(opt_factory, steps=5):
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s)) for s in ((5, 4), (7,), ())]
    opt = opt_factory(ps)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return ps, opt


@pytest.mark.parametrize("delta", [math.inf, "adaptive", 0.05])
@pytest.mark.parametrize("path", ["default", *available_paths()])
@pytest.mark.parametrize("kwargs", TORCH_INPUTS + CPU_TENSOR_INPUTS, ids=str)
def test_tensor_hyperparameters_on_every_path(kwargs, path, delta):
    """Tensor lr/betas give the float hyperparameters' result on every path that takes them;
    the paths that cannot (foreach without capturable) refuse at construction, as torch's."""
    tensors = any(isinstance(v, torch.Tensor) for v in (kwargs.get("lr"), *kwargs.get("betas", ())))
    route = {} if path == "default" else path_kwargs(path)
    if path == "foreach" and tensors and not kwargs.get("capturable"):
        with pytest.raises(ValueError, match="as a Tensor is not supported for capturable=False"):
            AdamHD([sample_param()], delta=delta, **kwargs, **route)
        return
    ps, opt = _run(lambda ps: AdamHD(ps, delta=delta, **kwargs, **route))
    want_ps, want_opt = _run(lambda ps: AdamHD(ps, delta=delta, **_floats(kwargs), **route))
    assert opt.paths == want_opt.paths
    for p, q in zip(ps, want_ps):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        for key, value in want_opt.state[q].items():
            torch.testing.assert_close(opt.state[p][key], value, rtol=1e-6, atol=1e-7, msg=key)


@pytest.mark.parametrize("kwargs", CPU_TENSOR_INPUTS, ids=str)
def test_tensor_hyperparameters_are_adamw_bit_for_bit(kwargs):
    """delta=inf on the single-tensor path with Tensor lr/betas is torch's AdamW, bit for bit."""
    ps, opt = _run(lambda ps: AdamHD(ps, delta=math.inf, foreach=False, fused=False, **kwargs))
    qs, adamw = _run(lambda ps: torch.optim.AdamW(ps, foreach=False, **kwargs))
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)
        for key, value in adamw.state[q].items():
            assert torch.equal(opt.state[p][key], value), key


def test_tensor_betas_are_stored_as_0_dim_like_torch():
    opt = AdamHD([sample_param()], betas=(T([[[0.9]]]), T([[0.99]])))
    ref = torch.optim.AdamW([sample_param()], betas=(T([[[0.9]]]), T([[0.99]])))
    assert [b.shape for b in opt.defaults["betas"]] == [b.shape for b in ref.defaults["betas"]]
    assert [b.dim() for b in opt.param_groups[0]["betas"]] == [0, 0]


@pytest.mark.parametrize("lr", [0.01, T(0.01)], ids=["float-lr", "tensor-lr"])
@pytest.mark.parametrize(
    "betas", [(T(0.9), T(0.99)), (T(0.9), 0.99), (0.9, T(0.99))], ids=["tt", "tf", "ft"]
)
def test_the_issue_combinations_fail_at_construction_not_in_step(lr, betas):
    """The six combinations of the issue (foreach, delta=inf) are rejected as torch rejects them,
    at construction, with torch's message."""
    kwargs = dict(lr=lr, betas=betas, delta=math.inf, foreach=True)
    with pytest.raises(ValueError) as ours:
        AdamHD([sample_param()], **kwargs)
    kwargs.pop("delta")
    with pytest.raises(ValueError) as theirs:
        torch.optim.AdamW([sample_param()], **kwargs)
    assert re.sub(r", got .*", "", str(ours.value)) == str(theirs.value)


def test_group_changed_to_tensor_betas_after_construction_raises_before_any_change():
    p, q = sample_param(), sample_param()
    opt = AdamHD([{"params": [p]}, {"params": [q]}], foreach=True)
    opt.param_groups[1]["betas"] = (T(0.9), T(0.99))
    p.grad, q.grad = torch.ones_like(p), torch.ones_like(q)
    before = p.detach().clone()
    with pytest.raises(RuntimeError, match="capturable=False and foreach=True"):
        opt.step()
    assert torch.equal(p.detach(), before) and len(opt.state) == 0


def test_default_path_never_picks_foreach_for_tensor_hyperparameters(monkeypatch):
    """Where torch's default would be foreach (accelerators), Tensor betas take the for-loop."""
    from adamhd import optimizer as optimizer_module

    monkeypatch.setattr(
        optimizer_module, "_default_to_fused_or_foreach", lambda *a, **k: (False, True)
    )
    monkeypatch.setattr(optimizer_module.kernels, "fused_is_default", lambda params: False)
    for betas, want in (((0.9, 0.99), "foreach"), ((T(0.9), T(0.99)), "single")):
        p = sample_param()
        opt = AdamHD([p], betas=betas)
        p.grad = torch.ones_like(p)
        opt.step()
        assert opt.paths[0] == want


# ------------------------------------------------------------------------------------------------
# item 4: AdamW's positional arguments
# ------------------------------------------------------------------------------------------------


def test_signature_is_adamws_up_to_amsgrad_then_keyword_only():
    ours = list(inspect.signature(AdamHD).parameters.values())
    theirs = list(inspect.signature(torch.optim.AdamW).parameters.values())
    assert [(p.name, p.kind, p.default) for p in ours[:6]] == [
        (p.name, p.kind, p.default) for p in theirs[:6]
    ]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in ours[6:])


def test_adamw_positional_call_sets_amsgrad():
    """AdamW's sixth positional argument is amsgrad; here too (it was delta, and raised)."""
    ps, opt = _run(lambda ps: AdamHD(ps, 1e-3, (0.9, 0.999), 1e-8, 0.01, True, delta=math.inf,
                                     foreach=False, fused=False))
    qs, adamw = _run(lambda ps: torch.optim.AdamW(ps, 1e-3, (0.9, 0.999), 1e-8, 0.01, True,
                                                  foreach=False))
    assert opt.param_groups[0]["amsgrad"] is True
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["max_exp_avg_sq"], adamw.state[q]["max_exp_avg_sq"])
    with pytest.raises(TypeError):
        AdamHD([sample_param()], 1e-3, (0.9, 0.999), 1e-8, 0.01, False, 0.05)


# ------------------------------------------------------------------------------------------------
# item 5: an AdamW checkpoint keeps this optimizer's constructor choices
# ------------------------------------------------------------------------------------------------


def test_adamw_checkpoint_keeps_the_constructor_values():
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(6, 4)), torch.nn.Parameter(torch.randn(4))
    adamw = torch.optim.AdamW(
        [{"params": [a]}, {"params": [b], "weight_decay": 0.0}], lr=3e-3, betas=(0.8, 0.9)
    )
    for p in (a, b):
        p.grad = torch.randn_like(p)
    adamw.step()
    ours = AdamHD(
        [{"params": [a], "delta": 0.05}, {"params": [b], "delta_scale": 3.0}],
        lr=1e-3, delta_beta=0.5, decay_form="proximal",
    )
    ours.load_state_dict(adamw.state_dict())
    first, second = ours.param_groups
    # the checkpoint's own keys win ...
    assert first["lr"] == second["lr"] == 3e-3 and first["betas"] == (0.8, 0.9)
    assert second["weight_decay"] == 0.0
    # ... and the keys it lacks keep what AdamHD was constructed with, group by group
    assert (first["delta"], first["delta_scale"], first["delta_beta"]) == (0.05, 1.5, 0.5)
    assert (second["delta"], second["delta_scale"]) == ("adaptive", 3.0)
    assert first["decay_form"] == second["decay_form"] == "proximal"
    # and the next step uses them: a fixed threshold keeps no EMA
    for p in (a, b):
        p.grad = torch.randn_like(p)
    ours.step()
    assert "delta_mu" not in ours.state[a] and ours.state[a]["step"].item() == 2


def test_adamhd_checkpoint_still_overrides_the_constructor():
    p = sample_param()
    saved = AdamHD([p], delta=0.3, decay_form="proximal")
    other = AdamHD([p], delta=0.05)
    other.load_state_dict(saved.state_dict())
    assert other.param_groups[0]["delta"] == 0.3
    assert other.param_groups[0]["decay_form"] == "proximal"


def test_group_count_mismatch_is_still_torchs_error():
    p, q = sample_param(), sample_param()
    one = AdamHD([p, q])
    two = AdamHD([{"params": [p]}, {"params": [q]}])
    with warnings.catch_warnings(), pytest.raises(ValueError, match="number of parameter groups"):
        two.load_state_dict(one.state_dict())
