"""The other entrants of the lab: adamhd's other optimizers and wrappers, registered when this
adamhd has them (`register_all(register)`, called by `optimizers`).

Conventions, so that `--decay-budget` means the same for everyone: weight decay acts as
tau = lr_t * weight_decay (SGDW is given decay_scaling="lr" instead of its default "schedule");
AdaLo's own decay is scaled by its loss-driven step lr*E/kappa (about 0.07 lr here), so its
budget is smaller than the nominal one. Muon entrants: Muon (adjust_lr_fn="match_rms_adamw", so
AdamW's lr and weight_decay carry over) on the 2-D weight matrices of the transformer blocks only;
embeddings (tied with the output head), biases and norms take AdamW (muon) or AdamHD (muonhd).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

import adamhd
from adamhd import AdamHD, param_groups
from adamhd.lab.model import prunable_weights


class Split:
    """Two optimizers over disjoint parameters, stepped together, looking like one to the lab
    (param_groups, state, zero_grad, step, state_dict / load_state_dict)."""

    def __init__(self, parts: list[torch.optim.Optimizer]):
        self.parts = parts

    @property
    def param_groups(self) -> list[dict]:
        return [g for part in self.parts for g in part.param_groups]

    @property
    def state(self) -> dict:
        return {k: v for part in self.parts for k, v in part.state.items()}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        for part in self.parts:
            part.step()

    def state_dict(self) -> dict:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state: dict) -> None:
        for part, sd in zip(self.parts, state["parts"], strict=True):
            part.load_state_dict(sd)


def _muon_builder(muon_cls: type, rest_cls: type) -> Callable:
    def build(model, lr, weight_decay, **kw):
        hidden = list(prunable_weights(model).values())
        ids = {id(p) for p in hidden}
        rest = [{**g, "params": [p for p in g["params"] if id(p) not in ids]}
                for g in param_groups(model, weight_decay)]
        rest = [g for g in rest if g["params"]]
        kw.setdefault("adjust_lr_fn", "match_rms_adamw")
        muon = muon_cls(hidden, lr=lr, weight_decay=weight_decay, **kw)
        return Split([muon, rest_cls(rest, lr=lr, weight_decay=weight_decay)])

    return build


def _wrapper_keys(cls: type) -> set[str]:
    """Keywords of a with_decoupled_decay class: its base's and the decay options."""
    from adamhd.decay.wrapper import DECAY_KEYS

    return set(inspect.signature(cls._decay_base).parameters) | set(DECAY_KEYS)


def register_all(register: Callable) -> None:
    # presets whose torch base this torch lacks (adamhd.optim.presets) are not entrants
    have = {name: getattr(adamhd, name) for name in dir(adamhd)
            if not getattr(getattr(adamhd, name), "unavailable", False)}
    _register_muons(register, have)
    _register_torch_and_wrapped(register, have)
    _register_survey(register, have)
    _register_wrappers(register, have)
    _register_decay_rules(register)
    _register_transforms(register)


def _plain(cls, **fixed) -> Callable:
    """The factory of an optimizer built as cls(groups, lr=, weight_decay=, **fixed)."""
    def factory(groups, lr, weight_decay, **kw):
        return cls(groups, lr=lr, weight_decay=weight_decay, **{**fixed, **kw})
    return factory


def _register_muons(register: Callable, have: dict) -> None:
    if hasattr(torch.optim, "Muon"):
        register("muon", None, torch.optim.Muon, "torch Muon on the block matrices, AdamW on the "
                 "rest", builder=_muon_builder(torch.optim.Muon, torch.optim.AdamW))
    if "MuonHD" in have:
        register("muonhd", None, have["MuonHD"], "MuonHD on the block matrices, AdamHD on the "
                 "rest", builder=_muon_builder(have["MuonHD"], AdamHD),
                 keys=_wrapper_keys(have["MuonHD"]))


def _register_torch_and_wrapped(register: Callable, have: dict) -> None:
    """torch's SGD, NAdam, RAdam, and adamhd's decay wrappers around torch optimizers."""
    for key, cls, note, scale, fixed in [
        ("sgd", torch.optim.SGD, "torch SGD, momentum 0.9, its own coupled weight decay (the "
         "baseline of sgdw)", 30.0, {"momentum": 0.9}),
        ("nadam", torch.optim.NAdam, "torch NAdam with decoupled_weight_decay=True (the "
         "baseline of nadamhd)", 1.0, {"decoupled_weight_decay": True}),
        ("radam", torch.optim.RAdam, "torch RAdam with decoupled_weight_decay=True (the "
         "baseline of radamhd)", 1.0, {"decoupled_weight_decay": True}),
    ]:
        register(key, _plain(cls, **fixed), cls, note, lr_scale=scale)
    for name, key, note, scale, fixed in [
        ("SGDW", "sgdw", "SGDW, momentum 0.9, decay_scaling='lr' (arXiv 1711.05101)", 30.0,
         {"momentum": 0.9, "decay_scaling": "lr"}),
        ("NAdamHD", "nadamhd", "torch NAdam + Huber decay", 1.0, {}),
        ("RAdamHD", "radamhd", "torch RAdam + Huber decay", 1.0, {}),
        ("AdafactorHD", "adafactorhd", "torch Adafactor + Huber decay", 1.0, {}),
    ]:
        if name in have:
            register(key, _plain(have[name], **fixed), have[name], note,
                     keys=_wrapper_keys(have[name]), lr_scale=scale)


def _register_survey(register: Callable, have: dict) -> None:
    """adamhd's own optimizers of the survey (adamhd.optim)."""
    for name, key, note, scale, extra in [
        ("NSGDA", "nsgda", "normalised SGD with momentum (arXiv 2210.04319)", 1.0, None),
        ("AdaLo", "adalo", "loss-driven step size (Inf. Sci. 690:121607); gets the loss", 100.0,
         lambda loss: {"loss": loss}),
        ("Adafactor", "adafactor", "adamhd's Adafactor (arXiv 1804.04235), relative step", 1.0,
         None),
        ("SMMF", "smmf", "SMMF, square-matricised factored moments", 1.0, None),
        ("SM3", "sm3", "SM3 (arXiv 1901.11150)", 30.0, None),
        ("AdaMomentum", "adamomentum", "AdaMomentum: v is the EMA of m^2 (arXiv 2106.11514)",
         1.0, None),
        ("FCAdam", "fcadam", "FCAdam_G-L: Adam on a Grünwald-Letnikov fractional gradient, "
         "K=10 past gradients (Mathematics 11(2):316)", 1.0, None),
    ]:
        if name in have:
            register(key, _plain(have[name]), have[name], note, extra, lr_scale=scale)
    if "AdaptiveMemorySGD" in have:
        register("am-sgd", _plain(have["AdaptiveMemorySGD"]), have["AdaptiveMemorySGD"],
                 "AM-SGD: SGD whose momentum beta_t is solved per step from a two-plane "
                 "proximal model, one beta for the model (arXiv 2510.04988); decoupled decay",
                 lr_scale=100.0, tune={"lam": (0.01, 1.0, True)})


def _register_wrappers(register: Callable, have: dict) -> None:
    if "Lookahead" in have:
        def lookahead(groups, lr, weight_decay, k=5, alpha=0.5, **kw):
            inner = AdamHD(groups, lr=lr, weight_decay=weight_decay, **kw)
            return have["Lookahead"](inner, k=k, alpha=alpha)

        register("adamhd-lookahead", lookahead, AdamHD, "Lookahead (k=5, alpha=0.5) around "
                 "AdamHD (arXiv 1907.08610)",
                 keys=set(inspect.signature(AdamHD).parameters) | {"k", "alpha"},
                 tune={"alpha": (0.3, 0.9, False)})


def _register_transforms(register: Callable) -> None:
    if hasattr(adamhd, "transforms"):
        for key, spec, note in [
            ("adamhd+agc", ("agc", {"clip": 0.01}), "AdamHD with unit-wise AGC (clip 0.01, arXiv "
             "2102.06171); the tied embedding / output head is not clipped, as the paper leaves "
             "the classifier layer"),
            ("adamhd+centralize", ("centralize", {}), "AdamHD with gradient centralisation "
             "(arXiv 2004.01461)"),
            ("adamhd+softclip", ("soft_clip", {}), "AdamHD with the seed's soft clip (row RMS of "
             "the gradient capped at the weight's)"),
        ]:
            register(key, None, AdamHD, note, builder=_transform_builder(*spec),
                     keys=set(inspect.signature(AdamHD).parameters))


def _transform_builder(name: str, options: dict) -> Callable:
    """AdamHD on the usual groups with one gradient transform attached (a step pre-hook that
    lives as long as the optimizer; the transforms keep no state, so resume is unchanged)."""

    def build(model, lr, weight_decay, **kw):
        opt = AdamHD(param_groups(model, weight_decay), lr=lr, weight_decay=weight_decay, **kw)
        exclude = [model.lm_head.weight] if name == "agc" and hasattr(model, "lm_head") else []
        adamhd.transforms.attach(opt, name, model=model, exclude=exclude, **options)
        return opt

    return build


#: AdamS's lambda per unit of the lab's weight_decay: sqrt(mean v_hat) of Adam on the lab's
#: mini/tiny GPT (lr 1e-3, first 60 steps) is 2.5e-3..3.2e-3, so 3e-3 makes AdamS's strength
#: lr*lambda_S/sqrt(vbar) about AdamW's lr*weight_decay at the start (docs/decay.md).
SWD_LAMBDA_PER_WD = 3e-3


def _register_decay_rules(register: Callable) -> None:
    """Stable Weight Decay (AdamS), CPR (AdamCPR), Amos and the update bound (adamhd+bound)."""
    from adamhd.decay.wrapper import with_decoupled_decay

    adam = with_decoupled_decay(torch.optim.Adam)

    def adams(groups, lr, weight_decay, **kw):
        kw = {"decay": "l2", "decay_scaling": "stable", **kw}
        return adam(groups, lr=lr, weight_decay=weight_decay * SWD_LAMBDA_PER_WD, **kw)

    def adamcpr(groups, lr, weight_decay, **kw):
        kw = {"decay": "cpr", "cpr_kappa_init": "warm_start", "cpr_kappa_param": 100, **kw}
        return adam(groups, lr=lr, weight_decay=weight_decay, **kw)

    register("adams", adams, adam, "AdamS: Adam + Stable Weight Decay (arXiv 2011.11152), "
             "lambda = 3e-3 x weight_decay", keys=_wrapper_keys(adam))
    register("adamcpr", adamcpr, adam, "AdamCPR: Adam + CPR (arXiv 2311.09058), kappa by warm "
             "start after 100 steps (cpr_kappa_param); weight_decay only marks the constrained "
             "groups", keys=_wrapper_keys(adam))
    if "Amos" in dir(adamhd):
        def amos(groups, lr, weight_decay, **kw):
            # Amos's adaptive decay replaces weight decay: its extra L2 stays 0 in every group
            groups = [{**g, "weight_decay": 0.0} for g in groups]
            return adamhd.Amos(groups, lr=lr, **kw)

        register("amos", amos, adamhd.Amos, "Amos (arXiv 2210.11693): shared per-tensor second "
                 "moment, adaptive decay toward 1/sqrt(fan_in); lr is its xi (the per-element "
                 "step is about xi/sqrt(fan_in)); --weight-decay unused", lr_scale=10.0)
    if hasattr(adamhd.transforms, "attach_update_bound"):
        register("adamhd+bound", None, AdamHD, "AdamHD with the update bound of arXiv 2505.21910 "
                 "(sigma1 ratio clipped at 0.1) on the block matrices; run it with --warmup 0",
                 builder=_bound_builder, keys=set(inspect.signature(AdamHD).parameters)
                 | {"threshold", "iters"})


def _bound_builder(model, lr, weight_decay, threshold=0.1, iters=2, **kw):
    opt = AdamHD(param_groups(model, weight_decay), lr=lr, weight_decay=weight_decay, **kw)
    adamhd.transforms.attach_update_bound(opt, list(prunable_weights(model).values()),
                                          threshold=threshold, iters=iters)
    return opt
