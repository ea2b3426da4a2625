"""The entrants: a registry of optimizer factories, and `name:key=value,...` specs from the CLI.

Every entrant gets the same parameter groups (`adamhd.param_groups`: biases and norm weights not
decayed) and the same lr / weight_decay; a spec can override any keyword of its factory, e.g.
`adamhd:delta_scale=2.0` or `adamw:betas=(0.9,0.95)`.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from adamhd import AdamHD, kernels, param_groups
from adamhd.lab import zoo

Factory = Callable[..., torch.optim.Optimizer]


def _same_implementation_as_adamhd(groups, kw: dict) -> dict:
    """Run a torch baseline with the implementation AdamHD's default picks for these params.

    AdamHD's ``fused=None`` takes its fused kernel where one serves every parameter, while torch's
    default on CPU is its for-loop path; wall-clock comparisons (claim a) must compare the
    algorithms, not a fused kernel against a for-loop. An explicit foreach/fused override wins.
    """
    if "foreach" in kw or "fused" in kw:
        return kw
    params = [p for g in groups for p in g["params"]]
    if kernels.fused_is_default(params):
        return {**kw, "fused": True}
    return {**kw, "foreach": False}


def _adamw(groups, lr, weight_decay, **kw):
    kw = _same_implementation_as_adamhd(groups, kw)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, **kw)


def _adamhd(groups, lr, weight_decay, **kw):
    return AdamHD(groups, lr=lr, weight_decay=weight_decay, **kw)


def _adam(groups, lr, weight_decay, **kw):
    # Plain Adam as a no-decay reference: weight_decay is ignored on purpose (it would be L2).
    kw = _same_implementation_as_adamhd(groups, kw)
    return torch.optim.Adam(groups, lr=lr, weight_decay=0.0, **kw)


@dataclass(frozen=True)
class Entrant:
    """A registered optimizer: `factory(groups, lr, weight_decay, **overrides)` builds it on
    `adamhd.param_groups(model)` (or `builder(model, lr, weight_decay, **overrides)` on the model
    itself, for optimizers that treat parameters by role); `keys` (default: `cls`'s constructor
    keywords) are the overrides a spec may set; `step_kwargs(loss)` gives extra keywords for
    `optimizer.step` (e.g. an optimizer that needs the loss); `lr_scale` multiplies the lr grid of
    `adamhd leaderboard` for this entrant (SGD-type steps need a larger lr than Adam-type), and
    the lr range of `adamhd tune`; `tune` declares the entrant's own search space for `adamhd
    tune`, on top of lr and weight_decay: (key, (low, high, log)) for its one key hyperparameter,
    or ("weight_decay", None) for an entrant that ignores weight decay."""

    factory: Factory | None
    cls: type
    note: str = ""
    step_kwargs: Callable[[torch.Tensor], dict] | None = None
    builder: Callable[..., torch.optim.Optimizer] | None = None
    keys: frozenset[str] | None = None
    lr_scale: float = 1.0
    tune: tuple = ()

    def accepted(self) -> set[str]:
        keys = self.keys if self.keys is not None else inspect.signature(self.cls).parameters
        return set(keys) - _RESERVED


REGISTRY: dict[str, Entrant] = {}

_RESERVED = {"params", "lr", "weight_decay"}


def register(name: str, factory: Factory | None, cls: type, note: str = "",
             step_kwargs: Callable[[torch.Tensor], dict] | None = None, *,
             builder: Callable[..., torch.optim.Optimizer] | None = None,
             keys=None, lr_scale: float = 1.0, tune: dict | None = None) -> None:
    """Add an entrant (replacing one of the same name). Example, a torch optimizer:

        register("sgdw", lambda groups, lr, wd, **kw: SGDW(groups, lr=lr, weight_decay=wd, **kw),
                 SGDW, "SGD with decoupled decay")
    """
    if not name or name != name.strip().lower() or any(c in name for c in ":,="):
        raise ValueError(f"entrant names are lower case without ':', ',' or '=': {name!r}")
    if (factory is None) == (builder is None):
        raise ValueError(f"entrant {name!r}: give a factory or a builder (one of them)")
    tune = tuple(sorted((tune or {}).items()))
    if len([k for k, dim in tune if dim is not None and k not in ("lr", "weight_decay")]) > 1:
        raise ValueError(f"entrant {name!r}: declare at most one key hyperparameter to tune")
    REGISTRY[name] = Entrant(factory, cls, note, step_kwargs, builder,
                             None if keys is None else frozenset(keys), lr_scale, tune)


register("adamw", _adamw, torch.optim.AdamW, "torch.optim.AdamW (the baseline)")
register("adamhd", _adamhd, AdamHD, "AdamHD: AdamW with decoupled Huber decay",
         tune={"delta_scale": (0.5, 5.0, True)})
register("adam", _adam, torch.optim.Adam, "torch.optim.Adam without decay (a reference)",
         tune={"weight_decay": None})


def _adamhd_variant(name: str, note: str, **fixed) -> None:
    """AdamHD with options fixed, registered only if this AdamHD has those options."""
    if not set(fixed) <= set(inspect.signature(AdamHD).parameters):
        return

    def factory(groups, lr, weight_decay, **kw):
        return AdamHD(groups, lr=lr, weight_decay=weight_decay, **{**fixed, **kw})

    register(name, factory, AdamHD, note)


_adamhd_variant("adamhd-atan2", "AdamHD, update=atan2 (Adam-atan2, no eps)", update="atan2")
_adamhd_variant("adamhd-cautious", "AdamHD, cautious=True (masked update, arXiv 2411.16085)",
                cautious=True)
_adamhd_variant("adamhd-cdecay", "AdamHD, cautious_decay=True (arXiv 2510.12402)",
                cautious_decay=True)
_adamhd_variant("adamhd-int8", "AdamHD, state_dtype=int8 (8-bit block-wise moments, issue 19)",
                state_dtype="int8")
_adamhd_variant("adamhd-bf16", "AdamHD, state_dtype=bfloat16 (bf16 moments, stochastic rounding)",
                state_dtype="bfloat16")


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    overrides: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        if not self.overrides:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in self.overrides.items())

    @property
    def slug(self) -> str:
        """A file-name-safe form of the label."""
        return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in self.label)

    def build(self, model: torch.nn.Module, lr: float, weight_decay: float):
        entrant = REGISTRY[self.name]
        if entrant.builder is not None:
            return entrant.builder(model, lr, weight_decay, **self.overrides)
        groups = param_groups(model, weight_decay)
        return entrant.factory(groups, lr, weight_decay, **self.overrides)

    def step_kwargs(self, loss: torch.Tensor) -> dict:
        extra = REGISTRY[self.name].step_kwargs
        return extra(loss) if extra else {}


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word, e.g. decay_form=proximal


def _split_top(text: str, sep: str) -> list[str]:
    """Split on `sep` outside brackets, so betas=(0.9,0.95) stays whole."""
    parts, depth, cur = [], 0, []
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def parse_spec(text: str) -> OptimizerSpec:
    name, _, rest = text.strip().partition(":")
    name = name.strip().lower()
    if name not in REGISTRY:
        raise ValueError(
            f"unknown optimizer {name!r}; registered: {', '.join(sorted(REGISTRY))}"
        )
    allowed = REGISTRY[name].accepted()
    overrides = {}
    for item in _split_top(rest, ",") if rest.strip() else []:
        key, eq, val = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"bad override {item!r} in {text!r}; expected key=value")
        if key not in allowed:
            raise ValueError(
                f"{name} has no option {key!r}; options: {', '.join(sorted(allowed))} "
                "(lr and weight_decay are set by --lr / --weight-decay for every entrant)"
            )
        overrides[key] = _value(val.strip())
    return OptimizerSpec(name, overrides)


def parse_specs(text: str) -> list[OptimizerSpec]:
    """`adamw,adamhd:delta_scale=2.0,delta_beta=0.9` -> two specs; `all` -> every registered
    entrant (adamw first, as the baseline).

    A comma-separated part that is a key=value pair continues the current entrant's overrides;
    any other part (a name, or name:overrides) starts a new entrant.
    """
    if text.strip().lower() == "all":
        text = ",".join(["adamw", *sorted(n for n in REGISTRY if n != "adamw")])
    specs: list[str] = []
    for part in _split_top(text, ","):
        head = part.strip().partition(":")[0]
        if "=" not in head or not specs:
            specs.append(part)
        else:
            specs[-1] += "," + part
    out = [parse_spec(s) for s in specs if s.strip()]
    if not out:
        raise ValueError("--optimizers: name at least one optimizer")
    labels = [s.label for s in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--optimizers lists the same entrant twice: {text!r}")
    by_slug: dict[str, str] = {}
    for spec in out:  # the folder name keeps only [A-Za-z0-9-_.=]: two labels may meet there
        other = by_slug.setdefault(spec.slug, spec.label)
        if other != spec.label:
            raise ValueError(f"--optimizers: {other!r} and {spec.label!r} would train into the "
                             f"same folder ({spec.slug!r}); write one of them differently")
    return out


zoo.register_all(register)
