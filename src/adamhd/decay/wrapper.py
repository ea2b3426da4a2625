"""``with_decoupled_decay(OptimizerClass)``: any torch optimizer with decoupled Huber/L2 decay.

The returned class is a real subclass of ``OptimizerClass`` (schedulers, ``isinstance``, Trainer,
Lightning, DCP accept it). Its constructor takes the base's arguments plus, keyword-only and per
param group, the decay options of ``adamhd.decay.options``: ``weight_decay``, ``decay``
(``"huber"`` default | ``"l2"``), ``delta``, ``delta_scale``, ``delta_beta``, ``decay_form``,
``cautious_decay``, ``decay_scaling``. The rules and their math live in ``adamhd.decay.rules``.
Two more, only here: ``decay_scaling="stable"`` (Stable Weight Decay, ``adamhd.decay.stable``:
``tau`` divided by ``sqrt(mean v_hat) + eps``; Adam-family bases) and ``decay="cpr"`` with
``cpr_mu``, ``cpr_kappa_init``, ``cpr_kappa_param`` (CPR, ``adamhd.decay.cpr``: a per-tensor
Lagrange multiplier on ``mean(p**2)``, applied after the base step; state ``cpr_lambda``,
``cpr_kappa``, ``cpr_step``).

Each step (``tau`` from ``adamhd.decay.strength``; ``u`` the base step's update, ``p_t`` the
weights before the step)::

    explicit:            p <- rule(p_t);   base step (weight_decay=0)
    proximal:            base step;        p <- prox(p)
    cautious (either):   base step;        p <- decay where sign(u)*sign(p_t) >= 0

* The group's ``weight_decay`` is the *decoupled* coefficient (as in AdamW). The base optimizer
  sees ``weight_decay=0`` during its step (L2 folded into the gradient is what decoupling exists
  to avoid), also in groups that set their own.
* The adaptive threshold's EMA ``mu`` is ``optimizer.state[p]["delta_mu"]`` (float32, float64
  for float64 weights, also after ``load_state_dict``); ``mean|p|`` is the whole tensor's, summed
  across ranks for FSDP2 (DTensor) weights by ``adamhd.distributed.whole_mean_abs``.
* Cautious decay needs the sign of the base step's update. The wrapper keeps a copy of ``p_t``
  for the groups with ``cautious_decay=True`` and takes ``u ∝ p_t - p_new``, the step the base
  really made (whatever its rule: Adam, a sign, an orthogonalised matrix, a relative step size).
  Cost: one weight-sized copy of those groups' weights during the step (4 bytes per fp32
  parameter), plus temporaries the size of one tensor (displacement, signs, mask) while each
  tensor is decayed.
* A step that GradScaler skips (inf/NaN gradients) applies no decay: GradScaler does not call
  ``step`` for most optimizers; bases that take ``grad_scale``/``found_inf`` themselves
  (``_step_supports_amp_scaling``, e.g. fused Adam) are called, and the wrapper then reads
  ``found_inf`` (one host sync) and leaves weights and ``delta_mu`` unchanged.
* A step the base refuses (it raises: e.g. Adam on a sparse gradient) changes nothing: the
  threshold EMA is advanced on copies and stored only after the base step. A sparse gradient is
  refused up front for torch's optimizers other than SGD, Adagrad and SparseAdam; for other
  bases the explicit decay keeps copies of ``p_t`` (like the cautious form) and restores them.
* ``closure`` is evaluated once, before the decay (gradients at ``p_t``); the base step gets none,
  so bases that must re-evaluate the loss (LBFGS, SAM) are not supported. Bases whose ``step``
  takes ``loss=`` (``adamhd.AdaLo``) get the closure's loss or the ``loss=`` given to ``step``;
  a base that requires one (``_step_requires_loss``) raises before any decay when none is given.
  Complex parameters and ``differentiable=True`` are rejected at construction.
* Known difference: with ``decay="l2"`` on ``torch.optim.Adafactor`` the base computes its
  relative step size ``rms(p)`` from the decayed weights (torch's own ``weight_decay`` computes it
  before decaying); on Adam-family bases the update does not read ``p`` and the order is moot.

* With ``torch.optim.Adam``/``AdamW`` and ``fused=True`` on CPU the whole step is one call of
  AdamHD's fused kernel on the base's own state (``adamhd.decay.fused_chain``; same state_dict).

Instances and classes pickle: each class is reachable as
``adamhd.decay.wrapper.classes.<encoded base name>`` and created again on unpickling.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import _default_to_fused_or_foreach

from adamhd.decay.base_state import wrapped_state_spec
from adamhd.decay.chunks import sweep
from adamhd.decay.cpr import CPR_DEFAULTS, CPR_STATE_KEYS, CPRDecay, check_cpr_options
from adamhd.decay.fused_chain import chain_reason, chain_step
from adamhd.decay.options import DECAY_DEFAULTS, DECAY_RULES, check_decay_options, rule_from_group
from adamhd.decay.rules import DecayRule, TensorDecay, Threshold, is_number
from adamhd.decay.stable import check_stable_base, mean_v_hat, stable_coefficient
from adamhd.decay.strength import (
    DECAY_SCALINGS,
    decay_strength,
    group_decay_coefficient,
    remember_initial_lr,
)
from adamhd.decay.threshold import mean_abs, mu_dtype
from adamhd.distributed import whole_mean_abs
from adamhd.kernels import fused_decay_, fused_decay_reason
from adamhd.state import check_optimizer_state, check_state_dict, restore_after_load

__all__ = ["classes", "with_decoupled_decay"]

DECAY_KEYS = ("weight_decay", *DECAY_DEFAULTS, *CPR_DEFAULTS)
FALLBACK_WEIGHT_DECAY = 1e-2  # AdamW's default, for bases whose own default is 0 or absent
MU_KEY = "delta_mu"
STAT_KEYS = (MU_KEY, *CPR_STATE_KEYS)  # float32/float64 state, whatever the weights' dtype
WRAPPER_RULES = (*DECAY_RULES, "cpr")  # decay="cpr": adamhd.decay.cpr
WRAPPER_SCALINGS = (*DECAY_SCALINGS, "stable")  # decay_scaling="stable": adamhd.decay.stable
# torch's optimizers that take sparse gradients: with other bases a step with a sparse gradient
# keeps copies of the explicitly decayed weights, restored if the base refuses it
SPARSE_BASES = (torch.optim.SGD, torch.optim.Adagrad, torch.optim.SparseAdam)


@dataclass
class _GroupDecay:
    """One param group's decay this step."""

    rule: DecayRule | CPRDecay
    tau: float | Tensor
    params: list[Tensor]
    ds: list[Threshold]
    foreach: bool
    mus: dict[Tensor, Tensor]  # this step's delta_mu (copies), stored after the base step
    new_mus: dict[Tensor, Tensor]  # those of them that are first thresholds (no state yet)
    new_state: dict[Tensor, dict[str, Tensor]]  # first CPR entries, stored after the base step
    before: list[Tensor] | None = None  # copies of p_t (cautious, or a base that may refuse)
    fused: bool = False  # the fused decay pass (adamhd.kernels.fused_decay_) applies the rule
    pass_mus: list[Tensor] | None = None  # fused, adaptive: the EMA copies the pass advances


class _DecoupledDecay:
    """Mixin placed before the base class; ``_decay_base`` is set on each generated class."""

    _decay_base: type[Optimizer]
    _decay_overrides: dict[str, Any] = {}  # subclasses (SGDW, presets) change defaults here
    _fused_decay_pass = True  # False: torch's ops only (``adamhd bench decay``'s "before")
    _fused_chain = True  # False: no one-call Adam + decay step (adamhd.decay.fused_chain)
    # the decay keys are this wrapper's: a base with native decay (adamhd.decay.native) neither
    # checks nor applies them (its step sees weight_decay=0)
    decay_by_wrapper = True
    _decay_state_checked = False  # the wrapper's own flag (a checked base keeps its own)

    def __init__(self, params: Any, *args: Any, **kwargs: Any) -> None:
        options = {k: kwargs.pop(k) for k in DECAY_KEYS if k in kwargs}
        base_sig = inspect.signature(self._decay_base.__init__)
        try:
            bound = base_sig.bind(self, params, *args, **kwargs)
        except TypeError as err:
            raise TypeError(f"{type(self).__name__}: {err}") from None
        if "weight_decay" in bound.arguments:  # given positionally: it is the decay coefficient
            if "weight_decay" in options:
                raise TypeError(f"{type(self).__name__}: multiple values for 'weight_decay'")
            options["weight_decay"] = bound.arguments.pop("weight_decay")
        defaults = {**DECAY_DEFAULTS, **CPR_DEFAULTS,
                    "weight_decay": _default_weight_decay(base_sig)}
        defaults.update(self._decay_overrides)
        defaults.update(options)
        _check_options(self._decay_base, {
            **defaults, "lr": bound.arguments.get("lr", _base_lr(base_sig)),
            "amsgrad": bound.arguments.get("amsgrad", False)})
        if "weight_decay" in base_sig.parameters:
            bound.arguments["weight_decay"] = 0.0
        self._pending_decay_defaults = defaults
        super().__init__(*bound.args[1:], **bound.kwargs)
        self.defaults.update(defaults)
        del self._pending_decay_defaults
        for group in self.param_groups:
            if group.get("differentiable", False):
                raise ValueError("with_decoupled_decay does not support differentiable=True")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        defaults = getattr(self, "_pending_decay_defaults", None) or self.defaults
        options = {key: param_group.get(key, defaults[key]) for key in DECAY_KEYS}
        _check_options(self._decay_base, {**getattr(self, "defaults", {}),
                                          "lr": self.defaults.get("lr"), **param_group, **options})
        _check_real(param_group)
        param_group.update(options)
        super().add_param_group(param_group)  # type: ignore[misc]
        remember_initial_lr(self.param_groups[-1])

    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        """Evaluate ``closure``, decay, run the base step (with ``weight_decay=0``), decay.

        Bases whose ``step`` takes the loss (``adamhd.AdaLo``) get ``loss=`` (the closure's, or
        the one given here); other keyword arguments are refused before anything changes."""
        loss = kwargs.pop("loss", None)
        takes_loss = "loss" in inspect.signature(self._decay_base.step).parameters
        if kwargs or (loss is not None and not takes_loss):
            extra = sorted(kwargs) if kwargs else ["loss"]
            raise TypeError(f"{type(self).__name__}.step() got unexpected arguments {extra}")
        for index, group in enumerate(self.param_groups):  # type: ignore[attr-defined]
            try:  # a group may have been changed since it was checked
                _check_options(self._decay_base, group)
            except ValueError as error:
                raise ValueError(f"param_groups[{index}]: {error}") from None
        self._check_state_once()
        if hasattr(self._decay_base, "check_step_inputs"):  # the base's own refusals, first
            self._decay_base.check_step_inputs(self)
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if loss is None and getattr(self, "_step_requires_loss", False):
            raise ValueError(f"{self._decay_base.__name__} needs the loss: step(closure) or "
                             "step(loss=loss)")
        base_kwargs = {"loss": loss} if takes_loss and loss is not None else {}
        if _skipped_by_grad_scaler(self):
            with _base_weight_decay_off(self.param_groups):
                self._base_step(**base_kwargs)
            return loss
        coefficients = self._coefficients()  # may raise
        if self._fused_chain and chain_reason(self) is None:
            with torch.no_grad():
                chain_step(self, coefficients, MU_KEY)
            return loss
        with torch.no_grad():
            plans = [self._plan(g, c) for g, c in zip(self.param_groups, coefficients) if c != 0]
            plans = [plan for plan in plans if plan is not None]
            _decay_before_base(plans, keep_copies=self._may_refuse_sparse())
        if any(plan.new_mus or plan.new_state for plan in plans):
            _break_graph_before_base_init()
        try:
            with _base_weight_decay_off(self.param_groups):
                self._base_step(**base_kwargs)
        except BaseException:
            _undo_decay(plans)  # the base refused: weights back to p_t, no delta_mu advanced
            raise
        with torch.no_grad():
            for plan in plans:
                self._decay_after_base(plan)
        return loss

    def _may_refuse_sparse(self) -> bool:
        """A gradient is sparse and the base is not one of torch's that take sparse gradients:
        torch's other optimizers refuse them (raised here, before anything changes: they would
        raise only after stepping the earlier param groups); with another base the explicit
        decay keeps copies of ``p_t`` to restore if the base step raises."""
        base = self._decay_base
        if issubclass(base, SPARSE_BASES):
            return False
        if not any(p.grad is not None and p.grad.is_sparse
                   for g in self.param_groups for p in g["params"]):
            return False
        if base.__module__.startswith("torch.optim"):
            raise RuntimeError(f"{base.__name__} does not support sparse gradients")
        return True

    def _decay_after_base(self, plan: _GroupDecay) -> None:
        """Once the base step has succeeded: first CPR state stored, the rules that act after
        the base step (CPR, cautious, proximal) applied, then this step's ``delta_mu`` stored."""
        for p, entries in plan.new_state.items():
            self.state[p].update(entries)  # type: ignore[attr-defined]
        if isinstance(plan.rule, CPRDecay):
            states = [self.state[p] for p in plan.params]  # type: ignore[attr-defined]
            plan.rule.apply_(plan.params, states, plan.before)
        elif plan.rule.cautious:
            _apply_cautious(plan)
        elif not plan.rule.before_update:
            _apply(plan)
        plan.before = None
        self._commit_mus(plan)

    def _commit_mus(self, plan: _GroupDecay) -> None:
        """Store this step's ``delta_mu`` (advanced on copies in ``_plan`` or by the fused pass)
        once the base step has succeeded."""
        for p, mu in plan.mus.items():
            if p in plan.new_mus:
                self.state[p][MU_KEY] = mu  # type: ignore[attr-defined]
            else:
                self.state[p][MU_KEY].copy_(mu)  # type: ignore[attr-defined]

    def _base_step(self, **kwargs: Any) -> None:
        """The base class's own ``step`` without torch's step hooks (they run once, around this
        class's ``step``)."""
        step = self._decay_base.step
        while getattr(step, "hooked", False):
            step = step.__wrapped__
        step(self, **kwargs)

    def _coefficients(self) -> list[float]:
        """Each group's ``c`` (``tau = lr_t*c``); ``decay_scaling="stable"`` divides by
        ``sqrt(vbar) + eps``, ``vbar`` the mean ``v_hat`` of all parameters (one statistic)."""
        groups = self.param_groups  # type: ignore[attr-defined]
        stable = [g.get("decay_scaling") == "stable" for g in groups]
        needed = any(s and g["weight_decay"] != 0 for s, g in zip(stable, groups))
        scale = getattr(self, "grad_scale", None)  # set by GradScaler for fused bases
        vbar = mean_v_hat(groups, self.state, scale) if needed else None  # type: ignore
        return [
            (0.0 if vbar is None else stable_coefficient(g["weight_decay"], vbar, g["eps"]))
            if is_stable else group_decay_coefficient(g)
            for g, is_stable in zip(groups, stable)
        ]

    def _plan(self, group: dict[str, Any], coefficient: float) -> _GroupDecay | None:
        """The group's rule, strength and thresholds (``delta_mu`` advanced on copies, stored by
        ``_commit_mus``); ``None`` if no parameter of the group has a gradient."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return None
        if group["decay"] == "cpr":
            cpr = CPRDecay.from_group(group)
            fresh = [p for p in params if "cpr_lambda" not in self.state.get(p, {})]  # type: ignore
            return _GroupDecay(cpr, 0.0, params, [], False, {}, {}, cpr.new_state(fresh))
        rule = rule_from_group(group)
        foreach = _use_foreach(group, params)
        tau = decay_strength(group["lr"], coefficient)
        if self._fused_decay_pass and fused_decay_reason(rule, params) is None:
            return self._fused_plan(rule, tau, params)
        abs_means = whole_mean_abs(params, foreach) if rule.adaptive else None
        mus, new_mus = {}, {}
        for p, a in zip(params, abs_means or ()):
            mu = self.state.get(p, {}).get(MU_KEY)  # type: ignore[attr-defined]
            if mu is None:  # mu_1 = a_1; stored after the base step, which may expect no state
                mu = new_mus[p] = a.to(mu_dtype(p)).clone()
            mus[p] = mu if p in new_mus else mu.clone()  # advanced here, committed after the base
        ds = rule.thresholds(params, list(mus.values()), foreach, abs_means=abs_means)
        return _GroupDecay(rule, tau, params, ds, foreach, mus, new_mus, {})

    def _fused_plan(self, rule: DecayRule, tau: float | Tensor, params: list[Tensor]
                    ) -> _GroupDecay:
        """The plan of a group that the fused decay pass serves. With an adaptive threshold the
        pass computes ``mean|p_t|`` itself (explicit: of ``p``, just before decaying it;
        cautious: of the copies of ``p_t``) and advances ``delta_mu``; a first ``delta_mu`` is
        NaN, which the guarded EMA replaces by ``mean|p_t|`` (``mu_1 = a_1``). Only the proximal
        form without the mask needs the thresholds now, before the base step changes ``p``."""
        plan = _GroupDecay(rule, tau, params, [rule.delta] * len(params), False, {}, {}, {},
                           fused=True)
        if not rule.adaptive:
            return plan
        for p in params:  # copies, committed after the base step (a refused step changes nothing)
            mu = self.state.get(p, {}).get(MU_KEY)  # type: ignore[attr-defined]
            if mu is None:
                mu = plan.new_mus[p] = torch.full((), math.nan, dtype=mu_dtype(p), device=p.device)
            plan.mus[p] = mu if p in plan.new_mus else mu.clone()
        mus = list(plan.mus.values())
        if rule.before_update or rule.cautious:
            plan.pass_mus = mus
        else:
            for p, mu in plan.new_mus.items():
                mu.copy_(mean_abs(p))
            plan.ds = rule.thresholds(params, mus, False)
        return plan

    def _check_state_once(self) -> None:
        """The state in use, strictly (dtype, device), once after construction or a load, as
        ``load_state_dict`` checks it (``adamhd.decay.base_state``), and a checked base's own
        check (``check_state_once``), before the decay changes anything. Not while compiling."""
        if not self._decay_state_checked and not torch.compiler.is_compiling():
            check_optimizer_state(self, wrapped_state_spec(self._decay_base))  # type: ignore
            self._decay_state_checked = True
        base_check = getattr(self, "check_state_once", None)
        if base_check is not None:
            base_check()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        self._decay_state_checked = False

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Checked first (``adamhd.decay.base_state``: ``StateError`` naming the parameter and
        key, before anything changes); the base's ``load_state_dict``, then ``delta_mu`` and the
        CPR state restored to
        float32/float64, and the base's float32/float64 scalar statistics of bf16/fp16 weights
        (NAdam's ``mu_product``) to their saved dtype: torch casts floating state to each
        parameter's dtype. A group saved without decay options (a checkpoint of the plain base
        optimizer) keeps this optimizer's options for that group."""
        check_state_dict(self, state_dict, wrapped_state_spec(self._decay_base))  # type: ignore
        options = [{k: g[k] for k in (*DECAY_KEYS, "initial_lr") if k in g}
                   for g in self.param_groups]  # type: ignore[attr-defined]
        super().load_state_dict(state_dict)  # type: ignore[misc]  # ends with __setstate__
        for group, kept in zip(self.param_groups, options):  # type: ignore[attr-defined]
            for key, value in kept.items():
                group.setdefault(key, value)
        restore_after_load(self, state_dict, _restored_dtype)  # type: ignore[arg-type]


def _apply(plan: _GroupDecay) -> None:
    """The rule without the mask: the fused pass (one op call for the group) or torch's ops."""
    if not plan.fused:
        plan.rule.apply_(plan.params, plan.tau, plan.ds, plan.foreach)
    elif plan.pass_mus is not None:
        fused_decay_(plan.params, plan.rule, plan.tau, mus=plan.pass_mus)
    else:
        given = [d for d in plan.ds if isinstance(d, Tensor)]
        fused_decay_(plan.params, plan.rule, plan.tau, ds=given or None)


def _decay_before_base(plans: list[_GroupDecay], keep_copies: bool) -> None:
    """Copy ``p_t`` where needed (cautious plans; explicit ones when ``keep_copies``), then apply
    the explicit decay."""
    for plan in plans:
        explicit = plan.rule.before_update and not plan.rule.cautious
        if plan.rule.cautious or (explicit and keep_copies):
            plan.before = [p.detach().clone() for p in plan.params]
        if explicit:
            _apply(plan)


def _undo_decay(plans: list[_GroupDecay]) -> None:
    """After the base step raised: restore the weights from the copies of ``p_t``."""
    with torch.no_grad():
        for plan in plans:
            if plan.before is not None:
                torch._foreach_copy_(plan.params, plan.before)
                plan.before = None


def _apply_cautious(plan: _GroupDecay) -> None:
    """Decay where the base step's update ``u ∝ p_t - p_new`` has the sign of ``p_t``.

    Explicit: the rule is applied to the copy of ``p_t`` and the base step's displacement is
    added back (``p_new = rule(p_t) + (p_new - p_t)``); proximal: to ``q = p_new``. The fused
    pass does both in one op call for the group, its threshold from the copies of ``p_t``."""
    assert plan.before is not None
    if plan.fused:
        fused_decay_(plan.params, plan.rule, plan.tau, p_ts=plan.before, mus=plan.pass_mus)
        plan.before = None
        return
    for p, p_t, d in zip(plan.params, plan.before, plan.ds):
        # chunk by chunk on large CPU tensors: displacement and mask stay chunk-sized
        decay = plan.rule.on(plan.tau, d, p.dtype)
        sweep(partial(_decay_cautiously, plan.rule, decay), p, p_t)


def _decay_cautiously(rule: DecayRule, decay: TensorDecay, p: Tensor, p_t: Tensor) -> None:
    """``_apply_cautious`` on one tensor (or one chunk of it): ``p`` after the base step, ``p_t``
    a copy of it before."""
    [mask] = rule.masks([p_t - p], [p_t], foreach=False)  # type: ignore[misc]
    if rule.before_update:
        p.sub_(p_t)
        decay(p_t, mask)
        p.add_(p_t)
    else:
        decay(p, mask)


def _check_real(param_group: dict[str, Any]) -> None:
    """The rules clip real numbers: complex parameters are rejected (``ValueError``)."""
    params = param_group["params"]
    if isinstance(params, Tensor):
        params = [params]
    elif not isinstance(params, list | tuple):  # a generator: read it once, hand torch the list
        if isinstance(params, set):
            return  # torch's own error names this
        params = param_group["params"] = list(params)
    for item in params:
        p = item[1] if isinstance(item, tuple) else item
        if isinstance(p, Tensor) and torch.is_complex(p):
            raise ValueError("with_decoupled_decay does not support complex parameters")


def _use_foreach(group: dict[str, Any], params: list[Tensor]) -> bool:
    """The group's ``foreach`` choice, else torch's default; multi-tensor ops need one device and
    one dtype."""
    foreach = group.get("foreach")
    if foreach is None:
        _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    kinds = {(p.device, p.dtype) for p in params}
    return bool(foreach) and len(kinds) == 1


def _default_weight_decay(sig: inspect.Signature) -> float:
    """The base's own default ``weight_decay`` when it is a positive number, else 1e-2."""
    param = sig.parameters.get("weight_decay")
    value = None if param is None else param.default
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return FALLBACK_WEIGHT_DECAY


def _base_lr(sig: inspect.Signature) -> Any:
    param = sig.parameters.get("lr")
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def _break_graph_before_base_init() -> None:
    """Under ``torch.compile``: end the graph before a base step that creates state, when the
    wrapper is to add ``delta_mu`` to that state after it.

    Dynamo runs the base's ``_init_group`` eagerly on the real ``optimizer.state`` (dynamo's
    ``OptimizerVariable``), while the wrapper had already read ``state`` into dynamo's copy; the
    wrapper's ``state[p]["delta_mu"] = mu`` on that stale copy was then written back over the
    dict the base had created (``MuonHD`` lost ``momentum_buffer``). torch's optimizers whose
    ``step`` is ``_use_grad_for_differentiable`` break the graph there themselves; Muon's does not.
    A break here makes dynamo read the state afresh after it. Eager: nothing."""
    if torch.compiler.is_compiling():
        torch._dynamo.graph_break()


def _skipped_by_grad_scaler(optimizer: Any) -> bool:
    found_inf = getattr(optimizer, "found_inf", None)
    return isinstance(found_inf, Tensor) and bool(found_inf.item())


@contextmanager
def _base_weight_decay_off(groups: list[dict[str, Any]]) -> Iterator[None]:
    saved = [group["weight_decay"] for group in groups]
    for group in groups:
        group["weight_decay"] = 0.0
    try:
        yield
    finally:
        for group, value in zip(groups, saved):
            group["weight_decay"] = value


def _restored_dtype(key: str, value: Tensor, p: Tensor) -> torch.dtype | None:
    """``STAT_KEYS`` in ``mu_dtype(p)``; the base's 0-dim float32/float64 statistics (not
    ``step``) of bf16/fp16 weights in their saved dtype."""
    if key in STAT_KEYS:
        return mu_dtype(p)
    wider = (value.dim() == 0 and value.dtype in (torch.float32, torch.float64)
             and p.dtype in (torch.bfloat16, torch.float16))
    return value.dtype if key != "step" and wider else None


def _check_options(base: type, group: dict[str, Any]) -> None:
    """The decay keys of ``group`` (``ValueError`` naming the first bad one), the wrapper's
    ``"cpr"`` rule and ``"stable"`` scaling included; a float ``lr`` must be finite, since the
    decay's strength is ``lr * weight_decay`` (a Tensor ``lr`` is left to the base: reading it
    would synchronise a device)."""
    lr = group.get("lr")
    if is_number(lr) and not math.isfinite(lr):
        raise ValueError(f"Invalid learning rate: lr={lr} (the decay strength lr * weight_decay "
                         "must be finite)")
    check_decay_options(group, WRAPPER_RULES, WRAPPER_SCALINGS)
    if group.get("decay") == "cpr":
        check_cpr_options(group)
        if group.get("decay_scaling", "lr") != "lr":
            raise ValueError("decay='cpr' has no decay strength to scale; leave decay_scaling "
                             f"at 'lr' (got {group['decay_scaling']!r})")
    check_stable_base(base, group)


# ---------------------------------------------------------------------------------------------
# The class factory
# ---------------------------------------------------------------------------------------------

_CLASSES: dict[type, type] = {}


def with_decoupled_decay(base: type) -> type:
    """A subclass of the torch optimizer ``base`` with decoupled decay (see the module).

    Example: ``SGDHD = with_decoupled_decay(torch.optim.SGD)``;
    ``SGDHD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)``. The same class is
    returned for the same ``base``. ``TypeError`` if ``base`` is not a ``torch.optim.Optimizer``
    subclass, already applies decoupled decay, or has no ``step`` method of its own.
    """
    if not (isinstance(base, type) and issubclass(base, Optimizer)):
        raise TypeError(
            f"with_decoupled_decay needs a torch.optim.Optimizer subclass, got {base!r}"
        )
    if issubclass(base, _DecoupledDecay):
        raise TypeError(f"{base.__name__} already applies decoupled decay")
    if base not in _CLASSES:
        _check_step(base)
        cls = type(f"{base.__name__}WithDecoupledDecay", (_DecoupledDecay, base), {})
        cls._decay_base = base
        cls.__module__ = __name__
        cls.__qualname__ = f"classes.{_encode(base)}"
        cls.__doc__ = f"``{base.__module__}.{base.__qualname__}`` with decoupled decay.\n\n" + (
            __doc__ or ""
        )
        _CLASSES[base] = cls
    return _CLASSES[base]


def _check_step(base: type) -> None:
    step = inspect.getattr_static(base, "step", None)
    if step is Optimizer.step or not inspect.isfunction(step):
        raise TypeError(
            f"with_decoupled_decay cannot wrap {base.__name__}: its step must be a plain method "
            f"of its own (found {step!r})"
        )
    try:
        inspect.signature(step).bind(None)
    except TypeError:
        raise TypeError(
            f"with_decoupled_decay cannot wrap {base.__name__}: its step cannot be called "
            "without arguments (the wrapper evaluates the closure itself)"
        ) from None


def _encode(base: type) -> str:
    """``module:qualname`` without dots (pickle splits a qualname at dots)."""
    return f"{base.__module__}:{base.__qualname__}".replace(".", "/")


class _Classes:
    """``classes.<encoded name>`` is ``with_decoupled_decay(base)``: how pickle finds a class."""

    def __getattr__(self, name: str) -> type:
        module_name, _, qualname = name.replace("/", ".").partition(":")
        if not qualname:
            raise AttributeError(name)
        base: Any = __import__(module_name, fromlist=["_"])
        for part in qualname.split("."):
            base = getattr(base, part)
        return with_decoupled_decay(base)


classes = _Classes()
