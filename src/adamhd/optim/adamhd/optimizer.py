"""``AdamHD``: a drop-in ``torch.optim.AdamW`` with decoupled Huber decay.

This class validates hyperparameters and holds state; the math is in
``adamhd.optim.adamhd.functional`` (Adam moments) and ``adamhd.decay`` (the decay rules, their
threshold, strength and option checks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import _default_to_fused_or_foreach, _use_grad_for_differentiable

from adamhd import kernels
from adamhd._torch_compat import graph_capture_health_check
from adamhd.decay import (
    DECAY_DEFAULTS,
    check_decay_options,
    mu_dtype,
    remember_initial_lr,
    rule_from_group,
)
from adamhd.distributed import any_dtensor, fused_dtensor_reason, whole_mean_abs
from adamhd.kernels.lowbit import fused_lowbit_reason, fused_lowbit_step
from adamhd.optim._base import options
from adamhd.optim.adamhd import lowbit, scales
from adamhd.optim.adamhd.functional import adamhd_step
from adamhd.optim.adamhd.step import AdamStep, AdamTensors
from adamhd.optim.adamhd.update_rules import UPDATE_DEFAULTS, UpdateRule, check_update_options
from adamhd.state import ADAM_STATE, CheckedState, Entry, check_layout, statistic_dtype

__all__ = ["AdamHD"]

DEFAULT_DELTA_SCALE = 1.5
DEFAULT_DELTA_BETA = 0.99


def _scalar_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _check_group(group: dict[str, Any], at_step: bool = False) -> None:
    """A group's options (constructor, ``add_param_group``, before each step: ``at_step``, see
    ``_check_hyperparameters``): ``ValueError`` naming the first invalid hyperparameter, then
    ``RuntimeError`` for a fused rule the kernels lack."""
    _check_hyperparameters(group, at_step)
    _check_fused_rule(group)


def _check_paths(defaults: dict[str, Any]) -> None:
    """The constructor's choice of path: torch AdamW's refusals."""
    if defaults["fused"]:
        if defaults["differentiable"]:
            raise RuntimeError("fused=True does not support differentiable=True")
        if defaults["foreach"]:
            raise RuntimeError("fused=True and foreach=True cannot both be set")
    if defaults["foreach"] and defaults["differentiable"]:
        raise RuntimeError("foreach=True does not support differentiable=True")


def _scalar(name: str, value: Any, tensor_ok: bool, read_tensor: bool = True) -> float:
    """``lr`` or a beta as a float: a number, or a 1-element Tensor where the path takes one
    (``read_tensor=False``: its shape checked, 0.0 returned, no host synchronisation)."""
    if isinstance(value, Tensor):
        if not tensor_ok:
            raise ValueError(
                f"{name} as a Tensor is not supported for capturable=False and foreach=True"
            )
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element, got shape {tuple(value.shape)}")
        return float(value.detach().reshape(())) if read_tensor else 0.0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"{name} must be a float or a 1-element Tensor, got {value!r}")


def _check_hyperparameters(group: dict[str, Any], at_step: bool = False) -> None:
    """Raise ``ValueError`` naming the first invalid hyperparameter of ``group``. ``at_step``:
    the check before each step, of groups that schedulers or users may have changed: Tensor
    ``lr``/``betas`` are checked for shape only (reading them would synchronise a CUDA stream),
    and a negative float ``lr`` passes, as torch's AdamW lets it (a scheduler's float drift
    below 0 at the end of a cosine must not stop a run); a NaN or infinite one does not."""
    tensor_ok = group["capturable"] or not group["foreach"]
    lr_value = _scalar("lr", group["lr"], tensor_ok, read_tensor=not at_step)
    if not (lr_value >= 0.0 or at_step) or not math.isfinite(lr_value):
        raise ValueError(f"Invalid learning rate: {lr_value} (lr must be finite and >= 0)")
    _check_betas(group["betas"], tensor_ok, read_tensors=not at_step)

    eps = group["eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise ValueError(f"Invalid epsilon value: eps must be a float (torch's AdamW documents a "
                         f"float), got a {type(eps).__name__}; pass float(eps)")
    if not eps >= 0.0:
        raise ValueError(f"Invalid epsilon value: {eps} (eps must be >= 0)")
    check_decay_options(group)
    check_update_options(group)
    lowbit.check_state_options(group)
    if lowbit.is_lowbit(group) and not UpdateRule.from_group(group).plain:
        raise ValueError(
            f"state_dtype={group.get('state_dtype')!r} / bf16_stochastic_round run Adam's "
            f"update only, not {UpdateRule.from_group(group).describe()}"
        )
    if lowbit.is_lowbit(group) and group.get("differentiable", False):
        raise ValueError(
            f"state_dtype={group.get('state_dtype')!r} / bf16_stochastic_round do not support "
            "differentiable=True (the moments are re-encoded outside autograd)"
        )


def lowbit_kernel(device_type: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``(reason, step)`` of the fused low-bit kernel for parameters on ``device_type``: the
    Triton kernel on CUDA (``kernels.triton_lowbit``), the CPU op elsewhere (which refuses
    what it cannot take)."""
    if device_type == "cuda":
        from adamhd.kernels import triton_lowbit

        return triton_lowbit.lowbit_reason, triton_lowbit.lowbit_step
    return fused_lowbit_reason, fused_lowbit_step


def _fused_lowbit_reason(group: dict[str, Any], params: list[Tensor]) -> str | None:
    return lowbit_kernel(params[0].device.type)[0](group, params) if params else None


def _fused_lowbit_step(tensors: AdamTensors, *args: Any, **kwargs: Any) -> None:
    lowbit_kernel(tensors.params[0].device.type)[1](tensors, *args, **kwargs)


def _check_fused_rule(group: dict[str, Any]) -> None:
    """``fused=True`` with a decay or update rule the kernels lack: a clear error naming it."""
    if group.get("fused"):
        reason = kernels.fused_rule_reason(rule_from_group(group)) or kernels.fused_update_reason(
            UpdateRule.from_group(group)
        )
        reason = reason or kernels.fused_state_reason(group)
        if reason is not None:
            raise RuntimeError(f"fused=True cannot be honoured: {reason}; use fused=None or False")


def _check_betas(betas: Any, tensor_ok: bool, read_tensors: bool = True) -> None:
    """torch.optim.AdamW's rules: two floats or two 1-element Tensors, each in [0, 1); Tensors
    only where the path can take them (not foreach without capturable)."""
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    if isinstance(betas[0], Tensor) != isinstance(betas[1], Tensor):
        raise ValueError(f"betas must be either both floats or both Tensors, got {betas!r}")
    for i, beta in enumerate(betas):
        value = _scalar(f"betas[{i}]", beta, tensor_ok, read_tensors)
        if not 0.0 <= value < 1.0:
            raise ValueError(
                f"Invalid beta parameter at index {i}: {value} (need 0 <= betas[{i}] < 1)"
            )


def _squeeze_betas(betas: Any) -> Any:
    """1-element Tensor betas as 0-dim Tensors (torch's ``_to_scalar``); anything else as is."""
    if isinstance(betas, (tuple, list)):
        return tuple(b.squeeze() if isinstance(b, Tensor) and b.dim() else b for b in betas)
    return betas


def _tensor_hyperparameters(group: dict[str, Any]) -> bool:
    return isinstance(group["lr"], Tensor) or any(isinstance(b, Tensor) for b in group["betas"])


class AdamHD(CheckedState, Optimizer):
    r"""AdamW with decoupled Huber decay (arXiv 2511.14721).

    Each step, per parameter tensor ``p`` with gradient ``g`` (``tau = lr * weight_decay``;
    the rules are ``adamhd.decay``'s, see ``docs/decay.md``)::

        m = beta1*m + (1-beta1)*g;   v = beta2*v + (1-beta2)*g**2
        u = (m / (1-beta1**t)) / (sqrt(v / (1-beta2**t)) + eps)
        explicit:  p = p - tau*clip(p, -d_t, d_t);   p = p - lr*u
        proximal:  q = p - lr*u;   p = argmin_z 0.5*(z-q)**2 + tau*Huber_{d_t}(z)

    The threshold ``d_t`` is ``delta`` when it is a number, or with ``delta="adaptive"``
    ``delta_scale * mu_t``, where ``mu_t`` is an EMA (``delta_beta``) of the whole tensor's
    ``mean|p|`` taken before the step (``mu_1 = mean|p_1|``). ``delta=math.inf`` with the explicit
    form is exactly ``torch.optim.AdamW``; ``weight_decay=0`` is exactly ``torch.optim.Adam``.

    Args:
        params: parameters or parameter groups, as for any torch optimizer.
        lr: learning rate (float or 1-element Tensor). Decay is scaled by it, as in AdamW.
        betas, eps, amsgrad, maximize, foreach, capturable, differentiable: as in
            ``torch.optim.AdamW``, positions included (``AdamHD(params, 1e-3, (0.9, 0.999), 1e-8,
            0.01, True)`` sets ``amsgrad``). ``lr`` and ``betas`` may be 1-element Tensors (both
            betas or neither) except with ``foreach=True`` and ``capturable=False``, which
            raises at construction, as in torch.
        weight_decay: the decay coefficient ``lambda`` (default 1e-2, AdamW's default).

    Keyword-only (after ``amsgrad``):
        delta: threshold of the Huber penalty: a positive float (``math.inf`` allowed) or
            ``"adaptive"`` (default).
        delta_scale: ``c`` in ``d_t = c * mu_t`` (adaptive only). Default 1.5.
        delta_beta: EMA coefficient of ``mu_t`` (adaptive only). Default 0.99.
        decay_form: ``"explicit"`` (default) or ``"proximal"``.
        fused: use a fused kernel (``adamhd.kernels``). ``True`` raises if none can serve every
            parameter; ``None`` picks it only where it is the fastest verified path.
        decay: ``"huber"`` (default) or ``"l2"`` (AdamW's decay: ``delta=math.inf``, the delta
            options are ignored).
        cautious_decay: decay only coordinates where the Adam update ``u`` and the weight
            ``p_t`` satisfy ``u*p_t >= 0`` (arXiv 2510.12402; with ``decay="l2"`` this is the
            paper's cautious AdamW). Default ``False``. The fused kernels implement it.
        decay_scaling: ``"lr"`` (default, ``tau = lr_t*weight_decay``) or ``"schedule"``
            (``tau = (lr_t/initial_lr)*weight_decay``, SGDW's ``eta_t*lambda``; ``initial_lr`` is
            the group's, set by an lr scheduler or else the lr at construction, which must be
            > 0).

    A non-finite ``mean|p|`` (a NaN or inf weight) does not enter the adaptive EMA, so one bad
    gradient element costs that element only, as in AdamW (``docs/decay.md``).

    The adaptive EMA advances on steps where the group's ``weight_decay`` is non-zero; groups
    without decay (biases, norms) cost no extra pass. Sparse gradients and complex parameters are
    rejected with an error before anything changes.

    ``load_state_dict`` (``adamhd.state``): group keys missing from the loaded groups (an AdamW
    checkpoint has no ``delta``...) keep the values this optimizer was constructed with; every
    state tensor is checked against its parameter first (a clear ``StateError``, nothing
    changed); ``delta_mu`` stays float32 (float64 for float64 weights) for bf16/fp16 weights.
    """

    state_spec = {
        **ADAM_STATE,
        "delta_mu": Entry(shape="scalar", dtype="statistic"),
        "adanorm_e": Entry(shape="scalar", dtype="statistic"),
        "prev_grad": Entry(),
        "exp_avg": Entry(dtype="moment", required=True),
        "exp_avg_sq": Entry(dtype="moment", required=True),
        "exp_avg_scale": Entry(shape=lambda p: (lowbit.blocks(p),), dtype="statistic"),
        "exp_avg_sq_scale": Entry(shape=lambda p: (lowbit.blocks(p),), dtype="statistic"),
    }

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        delta: float | str = "adaptive",
        delta_scale: float = DEFAULT_DELTA_SCALE,
        delta_beta: float = DEFAULT_DELTA_BETA,
        decay_form: str = "explicit",
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        decay: str = "huber",
        cautious_decay: bool = False,
        decay_scaling: str = "lr",
        update: str = "adam",
        atan2_a: float = 1.27,
        atan2_b: float = 1.0,
        softplus_beta: float = 50.0,
        cautious: bool = False,
        trust_ratio: bool = False,
        adanorm: bool = False,
        diffgrad: bool = False,
        state_dtype: str = "float32",
        min_8bit_size: int = lowbit.DEFAULT_MIN_8BIT_SIZE,
        bf16_stochastic_round: bool = False,
        rounding_seed: int = 0,
    ) -> None:
        defaults = {**options(locals()), "betas": _squeeze_betas(betas)}
        _check_group(defaults)
        _check_paths(defaults)
        super().__init__(params, defaults)
        if fused:
            self._check_fused_params()
            # The fused kernels read GradScaler's grad_scale/found_inf themselves.
            self._step_supports_amp_scaling = True
        self._paths: dict[int, str] = {}

    def _check_fused_params(self) -> None:
        """``fused=True``: ``RuntimeError`` unless a fused kernel serves every parameter."""
        for group in self.param_groups:
            rule = UpdateRule.from_group(group)
            for p in group["params"]:
                reason = fused_dtensor_reason(p) or kernels.fused_unsupported_reason(p)
                reason = reason or kernels.fused_update_reason(rule, p.device.type)
                if reason is None and lowbit.is_lowbit(group):
                    reason = _fused_lowbit_reason(group, [p])
                if reason is not None:
                    raise RuntimeError(f"fused=True cannot be honoured: {reason}")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _check_group({**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}})
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        remember_initial_lr(group)
        if not group["foreach"] and not group["differentiable"]:
            kernels.prepare(group["params"], group["fused"])  # not while a step is traced

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
            group.setdefault("capturable", False)
            group.setdefault("differentiable", False)
            for key, value in {**DECAY_DEFAULTS, **UPDATE_DEFAULTS,
                               **lowbit.STATE_OPTIONS}.items():
                group.setdefault(key, value)
            on_device = group["capturable"] or group["fused"]
            for p in group["params"]:
                p_state = self.state.get(p, {})
                step = p_state.get("step")
                if step is not None and not torch.is_tensor(step):
                    device = p.device if on_device else None
                    p_state["step"] = torch.tensor(
                        float(step), dtype=_scalar_dtype(), device=device
                    )
        self._paths = {}

    @property
    def paths(self) -> dict[int, str]:
        """The implementation ("single", "foreach", "fused") each group used at its last step."""
        return dict(self._paths)

    def _select_path(self, group: dict[str, Any], params: list[Tensor], hyper: AdamStep) -> str:
        if group["fused"]:
            return "fused"
        if lowbit.is_lowbit(group) and group["foreach"] is None:
            if self._fused_lowbit_default(group, params, hyper):
                return "fused"
            _, foreach = _default_to_fused_or_foreach(params, differentiable=False,
                                                      use_fused=False)
            return "foreach" if foreach and not _tensor_hyperparameters(group) else "single"
        if group["foreach"] is not None:
            return "foreach" if group["foreach"] else "single"
        if group["differentiable"]:
            return "single"
        if (
            group["fused"] is None
            and kernels.fused_rule_reason(hyper.decay) is None
            and kernels.fused_update_reason(hyper.update, params[0].device.type) is None
            and not any_dtensor(params)
            and kernels.fused_is_default(params)
        ):
            return "fused"
        _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
        # foreach takes Tensor lr/betas only when capturable (torch's default avoids it for lr)
        if foreach and _tensor_hyperparameters(group) and not group["capturable"]:
            return "single"
        return "foreach" if foreach else "single"

    @staticmethod
    def _fused_lowbit_default(group: dict[str, Any], params: list[Tensor],
                              hyper: AdamStep) -> bool:
        """``fused=None`` on a low-bit group: the fused low-bit CPU kernel where it serves every
        parameter (measured faster than the working-copy paths, ``docs/state-precision.md``),
        unless ``ADAMHD_FUSED_DEFAULT=0``."""
        return (
            group["fused"] is None
            and kernels.fused_rule_reason(hyper.decay) is None
            and kernels.fused_is_default(params)
            and _fused_lowbit_reason(group, params) is None
        )

    def _init_group(self, group: dict[str, Any], *lists: list[Tensor]) -> None:
        """Fill the lists (the fields of an ``AdamTensors``, in order) with the group's parameters
        that have a gradient and their state, created on first use. The lists are arguments, not
        a record, because ``torch.compile`` runs an optimizer's ``_init_group`` eagerly on list
        arguments."""
        t = AdamTensors(*lists)
        adaptive = group["delta"] == "adaptive" and group["decay"] == "huber"
        on_device = group["capturable"] or group["fused"]
        fresh_mu: list[Tensor] = []
        for p in group["params"]:
            if p.grad is None:
                continue
            t.params.append(p)
            t.grads.append(p.grad)
            state = self.state[p]
            if len(state) == 0:
                state["step"] = torch.zeros(
                    (), dtype=_scalar_dtype(), device=p.device if on_device else None
                )
                if lowbit.is_lowbit(group):
                    state.update(lowbit.new_moments(p, lowbit.wanted_format(group, p)))
                else:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
            if group["amsgrad"] and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            self._init_rule_state(group, p, state)
            if adaptive and "delta_mu" not in state:
                fresh_mu.append(p)
            t.exp_avgs.append(state["exp_avg"])
            t.exp_avg_sqs.append(state["exp_avg_sq"])
            if group["amsgrad"]:
                t.max_exp_avg_sqs.append(state["max_exp_avg_sq"])
            t.state_steps.append(state["step"])
        if adaptive:
            # mu starts at mean|p| of the tensor as it is now, so mu_1 = a_1 exactly (the whole
            # tensor's: sharded DTensor params share one all-reduce).
            for p, a in zip(fresh_mu, whole_mean_abs(fresh_mu)):
                self.state[p]["delta_mu"] = a.to(mu_dtype(p)).clone()
            t.delta_mus.extend(self.state[p]["delta_mu"] for p in t.params)

    @staticmethod
    def _init_rule_state(group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        """AdaNorm's gradient-norm EMA (``e_0 = 0``) and diffGrad's previous gradient (zeros)."""
        if group["adanorm"] and "adanorm_e" not in state:
            state["adanorm_e"] = torch.zeros((), dtype=statistic_dtype(p), device=p.device)
        if group["diffgrad"] and "prev_grad" not in state:
            state["prev_grad"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _check_before_step(self) -> None:
        """Reject what this optimizer cannot do before any state or weight changes."""
        self.check_state_once()
        for index, group in enumerate(self.param_groups):
            if group["foreach"] and not group["capturable"] and _tensor_hyperparameters(group):
                raise RuntimeError(
                    "lr and betas as Tensors are not supported for capturable=False and "
                    "foreach=True (a param group was changed after construction)"
                )
            try:  # a group may have been changed since it was checked
                _check_group(group, at_step=True)
            except ValueError as error:
                raise ValueError(f"param_groups[{index}]: {error}") from None
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        "AdamHD does not support sparse gradients; use dense gradients "
                        "(for nn.Embedding, sparse=False)"
                    )
                if torch.is_complex(p):
                    raise RuntimeError("AdamHD does not support complex parameters")

    def _convert_if_state_dtype_changed(self, index: int, group: dict[str, Any]) -> None:
        """Moments stored as the group's ``state_dtype``/``min_8bit_size`` ask, also after
        either was changed in ``param_groups`` (converted as a checkpoint load converts them)."""
        wanted = (group.get("state_dtype"), group.get("min_8bit_size"))
        formats = self.__dict__.setdefault("_state_formats", {})
        if formats.get(index) == wanted:
            return
        for p in group["params"]:
            lowbit.convert_moments(self.state.get(p, {}), p, lowbit.wanted_format(group, p))
        formats[index] = wanted

    def _positions(self, params: list[Tensor]) -> list[int]:
        """Each parameter's index in the optimizer (all groups, in order)."""
        index = {id(p): i for i, p in
                 enumerate(p for group in self.param_groups for p in group["params"])}
        return [index[id(p)] for p in params]

    def state_dict(self) -> dict[str, Any]:
        """torch's state_dict; the int8 scales of DTensor (FSDP2) parameters as DTensors, so
        that DCP saves every shard's (``scales.scale_form``)."""
        params = [p for group in self.param_groups for p in group["params"]]
        return scales.with_scale_forms(params, super().state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """``CheckedState``'s load; then the moments are restored from ``state_dict`` as saved
        (torch's load casts every state tensor to the parameter's dtype) and converted to this
        optimizer's ``state_dtype``: the storage precision is this process's choice
        (``state_dtype`` and ``min_8bit_size`` keep this optimizer's values)."""
        check_layout(self, state_dict)
        keep = [{k: g[k] for k in ("state_dtype", "min_8bit_size")} for g in self.param_groups]
        lowbit.check_saved_codes(self, state_dict)
        state_dict = scales.local_scales(self, state_dict)
        super().load_state_dict(state_dict)
        for group, kept in zip(self.param_groups, keep):
            group.update(kept)
        lowbit.restore_moments(self, state_dict)

    @_use_grad_for_differentiable
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One optimization step; ``closure`` re-evaluates the model and returns the loss."""
        graph_capture_health_check(self)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        self._check_before_step()
        # Every group's hyperparameters before any tensor changes (a bad initial_lr raises here).
        hypers = [AdamStep.from_group(group) for group in self.param_groups]
        for index, (group, hyper) in enumerate(zip(self.param_groups, hypers)):
            self._convert_if_state_dtype_changed(index, group)
            tensors = AdamTensors()
            self._init_group(group, *tensors.lists())
            if not tensors.params:
                continue
            path = self._select_path(group, tensors.params, hyper)
            self._paths[index] = path
            fused = path == "fused"
            if lowbit.is_lowbit(group):
                states = [self.state[p] for p in tensors.params]
                positions = self._positions(tensors.params)
                if fused:
                    _fused_lowbit_step(tensors, hyper, group, states, positions,
                                      grad_scale=getattr(self, "grad_scale", None),
                                      found_inf=getattr(self, "found_inf", None))
                else:
                    lowbit.step_lowbit(tensors, hyper, group, states, positions,
                                       path == "foreach")
                continue
            adamhd_step(
                tensors,
                hyper,
                foreach=path == "foreach",
                fused=fused,
                grad_scale=getattr(self, "grad_scale", None) if fused else None,
                found_inf=getattr(self, "found_inf", None) if fused else None,
                rule_states=None if hyper.update.plain else [self.state[p] for p in tensors.params],
            )
        return loss
