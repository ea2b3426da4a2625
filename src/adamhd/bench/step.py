"""``adamhd bench step``: time one optimizer step of AdamHD against torch's AdamW (and others).

Method:

* Parameter sets shaped like real models: GPT-2 124M (all its tensors), and a stack of layers of a
  1B-parameter model (d_model 2048, MLP 8192), scaled down to ``--layers`` layers.
* All contenders share the same parameters and gradients (one copy in memory). Each contender's
  moment buffers are created by its first step, measured (bytes per parameter), then replaced by
  one shared set, so memory stays at about 16 bytes/param whatever the number of contenders.
  Contenders whose state is not AdamW-shaped (heavyball, pytorch_optimizer) keep their own.
* Contenders are interleaved in one process: each round times one step of every contender, in a
  rotated order, and the figure is the median over rounds. The fused AdamHD kernel with adaptive
  delta caches ``sum|p|`` of the tensor it wrote, guarded by ``p._version``; since the other
  contenders write the shared ``p`` in between, each of its timed steps is preceded by one
  untimed step (a training loop has no other optimizer writing its weights).
* Effective bandwidth: 28 bytes per fp32 parameter (read p, g, m, v; write p, m, v) over the
  median time; the physical limit is a measured ``copy_`` bandwidth (read + write).
* Transient memory: the peak RSS rise during a steady-state step (``/proc/self/clear_refs``),
  per parameter; persistent state: bytes of the optimizer state per parameter.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from adamhd.argtypes import choices_of, list_of, nonneg_int, positive_float, positive_int
from adamhd.bench.wrappers import CLOCKS

BYTES_PER_PARAM = 28  # fp32: read p, g, m, v; write p, m, v
#: the plain fused AdamHD row (the default step) that the "x AdamHD fused" column divides by
PLAIN_FUSED = "AdamHD fused adaptive explicit"


# ---------------------------------------------------------------------------------------------
# Parameter sets
# ---------------------------------------------------------------------------------------------


def gpt2_124m_shapes() -> list[tuple[int, ...]]:
    """The 148 tensors of GPT-2 small (124M parameters, tied embeddings)."""
    d, vocab, ctx, layers = 768, 50257, 1024, 12
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,)]
        shapes += [(d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    shapes += [(d,), (d,)]
    return shapes


def layer_stack_1b_shapes(layers: int) -> list[tuple[int, ...]]:
    """``layers`` transformer layers of a ~1B model (d 2048, MLP 8192, 24 layers in full)."""
    d, ff = 2048, 8192
    shapes: list[tuple[int, ...]] = []
    for _ in range(layers):
        shapes += [(d,), (3 * d, d), (d, d), (d,), (ff, d), (d, ff)]
    return shapes


def gpt_like_shapes() -> list[tuple[int, ...]]:
    """146 tensors, 42.5M parameters: 12 layers of d=512 (MLP 2048), vocabulary 8192, context 1024
    (embeddings, attention and MLP matrices, biases, norms): the set of issue 13."""
    d, ff, vocab, ctx, layers = 512, 2048, 8192, 1024, 12
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,)]
        shapes += [(d,), (d,), (ff, d), (ff,), (d, ff), (d,)]
    return shapes


def tiny_shapes(count: int) -> list[tuple[int, ...]]:
    """``count`` tensors of 16 elements: the fixed cost per tensor, not bandwidth."""
    return [(16,)] * count


PARAM_SETS: dict[str, Callable[[argparse.Namespace], list[tuple[int, ...]]]] = {
    "gpt2-124m": lambda args: gpt2_124m_shapes(),
    "gpt-like": lambda args: gpt_like_shapes(),
    "1b-stack": lambda args: layer_stack_1b_shapes(args.layers),
    "tiny": lambda args: tiny_shapes(args.tiny),
}


# ---------------------------------------------------------------------------------------------
# Contenders
# ---------------------------------------------------------------------------------------------


@dataclass
class Contender:
    name: str
    make: Callable[[list[Tensor]], torch.optim.Optimizer]
    family: str  # "adamhd", "torch", "external"
    prime: bool = False  # take one untimed step before each timed one (see module docstring)
    optimizer: torch.optim.Optimizer | None = None
    times: list[float] = field(default_factory=list)
    state_bytes_per_param: float = math.nan
    peak_extra_bytes_per_param: float = math.nan
    error: str | None = None


def option_contenders(lr: float, wd: float) -> list[Contender]:
    """Each elementwise option of the fused kernel, to read against "AdamHD fused adaptive
    explicit" (the plain fused step) in the same table."""
    from adamhd import AdamHD

    out = []
    for name, kw in (("cautious_decay", dict(cautious_decay=True)), ("decay=l2", dict(decay="l2")),
                     ("decay=l2 cautious", dict(decay="l2", cautious_decay=True)),
                     ("update=atan2", dict(update="atan2")),
                     ("update=softplus", dict(update="softplus"))):
        out.append(Contender(f"AdamHD fused {name}",
                             lambda ps, kw=kw: AdamHD(ps, lr=lr, weight_decay=wd, fused=True, **kw),
                             "adamhd", prime=True))
    return out


def survey_contenders(lr: float, wd: float) -> list[Contender]:
    """Adafactor, SM3 and SMMF on the single-tensor and the foreach path (issue 20), to read
    against torch's foreach AdamW in the same table."""
    from adamhd import SM3, SMMF, Adafactor

    return [
        Contender(f"{cls.__name__} {path}",
                  lambda ps, cls=cls, path=path: cls(ps, lr=lr, weight_decay=wd,
                                                     foreach=path == "foreach"),
                  "adamhd")
        for cls in (Adafactor, SM3, SMMF) for path in ("single", "foreach")
    ]


def _compiled(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """``opt`` with its ``step`` replaced by ``torch.compile(opt.step)``."""
    opt.step = torch.compile(opt.step)  # type: ignore[method-assign]
    return opt


PATH_KWARGS = {"single": dict(foreach=False), "foreach": dict(foreach=True),
               "fused": dict(fused=True)}


def contenders(args: argparse.Namespace) -> list[Contender]:
    """Everything ``args`` asks to time: torch's AdamW paths, AdamHD's paths x thresholds x forms
    (and options), the kernel's options, the compiled steps, the external AdamWs."""
    from adamhd.kernels import fused_unsupported_reason

    lr, wd = 1e-4, 0.1
    out = [Contender(f"torch AdamW {path}",
                     lambda ps, kw=PATH_KWARGS[path]: torch.optim.AdamW(ps, lr=lr,
                                                                       weight_decay=wd, **kw),
                     "torch")
           for path in args.torch]
    if args.compile:
        out += _compiled_contenders(lr, wd)
    fused_ok = fused_unsupported_reason(torch.zeros(1)) is None
    for path in args.paths:
        if path == "fused" and not fused_ok:
            print(f"skipping AdamHD fused: {fused_unsupported_reason(torch.zeros(1))}")
            continue
        out += _path_contenders(path, args, lr, wd)
    if args.kernel_options and fused_ok:
        out += option_contenders(lr, wd)
    if args.survey:
        out += survey_contenders(lr, wd)
    if args.external:
        out += _external_contenders(lr, wd)
    return out


def _compiled_contenders(lr: float, wd: float) -> list[Contender]:
    from adamhd import AdamHD

    return [
        Contender("torch AdamW fused compiled",
                  lambda ps: _compiled(torch.optim.AdamW(ps, lr=lr, weight_decay=wd, fused=True)),
                  "torch"),
        Contender("AdamHD default compiled",
                  lambda ps: _compiled(AdamHD(ps, lr=lr, weight_decay=wd)), "adamhd", prime=True),
    ]


def _path_contenders(path: str, args: argparse.Namespace, lr: float,
                     wd: float) -> list[Contender]:
    """AdamHD on one path: each threshold x decay form, then each ``--options`` item."""
    from adamhd import AdamHD

    kw = PATH_KWARGS[path]
    out = []
    for delta in args.deltas:
        delta_value: float | str = delta if delta == "adaptive" else float(delta)
        for form in args.forms:
            name = f"AdamHD {path} {'adaptive' if delta == 'adaptive' else 'd=' + delta}"
            name += f" {form}"

            def make(ps, kw=kw, delta_value=delta_value, form=form):
                return AdamHD(ps, lr=lr, weight_decay=wd, delta=delta_value,
                              decay_form=form, **kw)

            out.append(Contender(name, make, "adamhd",
                                 prime=path == "fused" and delta == "adaptive"))
    for option in (o for o in args.options.split(",") if o):
        out.append(_option_contender(path, kw, option, lr, wd))
    return out


def _external_contenders(lr: float, wd: float) -> list[Contender]:
    """Other libraries' AdamW, where installed (one missing or broken is reported, not fatal)."""
    makers = {
        "heavyball": lambda lib, ps: lib.AdamW(ps, lr=lr, weight_decay=wd, betas=(0.9, 0.999)),
        "pytorch_optimizer": lambda lib, ps: lib.AdamW(ps, lr=lr, weight_decay=wd),
    }
    out = []
    for module, make in makers.items():
        try:
            lib = importlib.import_module(module)
        except Exception as exc:  # not installed or broken: reported, not fatal
            print(f"{module} not available: {exc!r}")
            continue
        out.append(Contender(f"{module} AdamW", lambda ps, lib=lib, make=make: make(lib, ps),
                             "external"))
    return out


def _option_value(text: str) -> bool | float | str:
    if text in ("True", "False"):
        return text == "True"
    try:
        return float(text)
    except ValueError:
        return text


def _parse_option(option: str) -> dict[str, bool | float | str]:
    """``key=value`` or ``key=value+key=value`` as AdamHD keyword arguments."""
    options = {}
    for item in option.split("+"):
        key, equals, value = item.partition("=")
        if not key or not equals:
            raise ValueError(f"{item!r} is not key=value")
        options[key] = _option_value(value)
    return options


def _adamhd_options(text: str) -> str:
    """``--options``, checked before anything is timed: every item must make an AdamHD (on a
    one-element parameter), so a misspelt key or a bad value stops the run at once."""
    from adamhd import AdamHD

    for option in (o for o in text.split(",") if o):
        try:
            AdamHD([torch.nn.Parameter(torch.zeros(1))], **_parse_option(option))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise argparse.ArgumentTypeError(f"{option!r}: {exc}") from None
    return text


def _option_contender(path: str, kw: dict, option: str, lr: float, wd: float) -> Contender:
    """AdamHD (adaptive Huber, explicit) on ``path`` with one more option, ``key=value`` or
    ``key=value+key=value`` (e.g. ``update=atan2``, ``cautious=True+trust_ratio=True``).
    ``fused`` with an option the kernels lack is reported as an error row."""
    from adamhd import AdamHD

    options = _parse_option(option)

    def make(ps):
        return AdamHD(ps, lr=lr, weight_decay=wd, **options, **kw)

    # fused: primed as the plain fused row (its cached sum|p| survives only its own writes)
    return Contender(f"AdamHD {path} adaptive explicit {option}", make, "adamhd",
                     prime=path == "fused")


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def copy_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 7) -> float:
    """Memory-copy bandwidth in GB/s (bytes read + bytes written), median of ``repeats``."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t)
    return 2 * nbytes / statistics.median(times) / 1e9


def _rss_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_extra_bytes(step: Callable[[], None]) -> float:
    """Peak RSS rise (bytes) while ``step`` runs; NaN where /proc cannot tell."""
    gc.collect()
    if not _reset_peak_rss():
        return math.nan
    before = _rss_kib("VmRSS")
    step()
    peak = _rss_kib("VmHWM")
    if before is None or peak is None:
        return math.nan
    return max(peak - before, 0) * 1024.0


def _state_tensors(opt: torch.optim.Optimizer) -> list[Tensor]:
    return [v for s in opt.state.values() for v in s.values() if isinstance(v, Tensor)]


def _share_moments(opt: torch.optim.Optimizer, shared: dict[tuple, Tensor]) -> None:
    """Point AdamW-shaped state (exp_avg, exp_avg_sq) at one shared set of buffers (per dtype:
    AdamHD's ``state_dtype`` keeps bf16 or 8-bit moments of the parameter's shape)."""
    for p, s in opt.state.items():
        for key in ("exp_avg", "exp_avg_sq"):
            if key in s and isinstance(s[key], Tensor) and s[key].shape == p.shape:
                s[key] = shared.setdefault((id(p), key, s[key].dtype), s[key])


class _ParamSet:
    """A fixed random parameter set and its gradients (seed 0), ``set_grads`` before each step
    (some optimizers, heavyball, set ``p.grad = None`` after a step)."""

    def __init__(self, shapes: list[tuple[int, ...]]):
        gen = torch.Generator().manual_seed(0)
        self.params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in shapes]
        self.grads = [torch.randn(p.shape, generator=gen) * 1e-3 for p in self.params]
        self.set_grads()
        self.numel = sum(p.numel() for p in self.params)

    def set_grads(self) -> None:
        for p, g in zip(self.params, self.grads):
            p.grad = g

    def clear(self) -> None:
        self.params.clear()
        self.grads.clear()


def run_param_set(set_name: str, shapes: list[tuple[int, ...]], args: argparse.Namespace,
                  log: Callable[[str], None]) -> dict:
    ps = _ParamSet(shapes)
    log(f"[{set_name}] {len(ps.params)} tensors, {ps.numel / 1e6:.1f}M parameters")
    shared: dict[tuple, Tensor] = {}
    entries = contenders(args)
    for c in entries:
        _ready(c, ps, shared, log)
        gc.collect()
    _timed_rounds([c for c in entries if c.optimizer is not None], ps, args.rounds,
                  getattr(args, "clock", "wall"), log)
    rows = _result_rows(entries, ps.numel, len(shapes))
    for c in entries:
        c.optimizer = None
    ps.clear()
    shared.clear()
    gc.collect()
    return {"param_set": set_name, "tensors": len(shapes), "parameters": ps.numel, "rows": rows}


def _ready(c: Contender, ps: _ParamSet, shared: dict[tuple, Tensor],
           log: Callable[[str], None]) -> None:
    """Build ``c``'s optimizer and take its first step (state, kernels); measure its state and
    peak memory; its moments then share one set of buffers with the others'. A failure is
    kept as the contender's error."""
    try:
        c.optimizer = c.make(ps.params)
        step = c.optimizer.step

        def fresh_step(step=step) -> None:
            ps.set_grads()
            step()

        t = time.perf_counter()
        fresh_step()  # creates the state (and builds/compiles kernels)
        state = _state_tensors(c.optimizer)
        c.state_bytes_per_param = sum(x.numel() * x.element_size() for x in state) / ps.numel
        if not state:  # keeps its state outside optimizer.state (heavyball): unknown
            c.state_bytes_per_param = math.nan
        if c.prime:
            fresh_step()
        ps.set_grads()
        c.peak_extra_bytes_per_param = peak_extra_bytes(step) / ps.numel
        if c.family != "external":
            _share_moments(c.optimizer, shared)
        log(f"  ready {c.name} ({time.perf_counter() - t:.1f}s)")
    except Exception as exc:
        c.error = f"{type(exc).__name__}: {exc}"
        c.optimizer = None
        log(f"  failed {c.name}: {c.error}")


def _timed_rounds(live: list[Contender], ps: _ParamSet, rounds: int, clock: str,
                  log: Callable[[str], None]) -> None:
    """One timed step per contender per round (on `clock`, see --clock), the order rotated each
    round."""
    now = CLOCKS[clock]
    for r in range(rounds):
        order = live[r % len(live):] + live[: r % len(live)]
        for c in order:
            assert c.optimizer is not None
            if c.prime:
                ps.set_grads()
                c.optimizer.step()
            ps.set_grads()
            t = now()
            c.optimizer.step()
            c.times.append(now() - t)
        log(f"  round {r + 1}/{rounds} done")


def _median_ms(c: Contender) -> float:
    return statistics.median(c.times) * 1e3 if c.times else math.nan


def _result_rows(entries: list[Contender], numel: int, tensors: int) -> list[dict]:
    """One row per contender: times, bandwidth, ratios to torch's AdamW, memory, error."""
    by_name = {c.name: _median_ms(c) for c in reversed(entries) if c.times}
    fused_ms = by_name.get("torch AdamW fused", math.nan)
    foreach_ms = by_name.get("torch AdamW foreach", math.nan)
    plain_ms = by_name.get(PLAIN_FUSED, math.nan)
    rows = []
    for c in entries:
        ms = _median_ms(c)
        rows.append({
            "name": c.name,
            "family": c.family,
            "median_ms": ms,
            "min_ms": min(c.times) * 1e3 if c.times else math.nan,
            "max_ms": max(c.times) * 1e3 if c.times else math.nan,
            "gb_per_s": numel * BYTES_PER_PARAM / (ms / 1e3) / 1e9 if c.times else math.nan,
            "ratio_to_torch_fused": ms / fused_ms,
            "ratio_to_torch_foreach": ms / foreach_ms,
            "ratio_to_adamhd_fused": ms / plain_ms,
            "us_per_tensor": ms * 1e3 / tensors,
            "state_bytes_per_param": c.state_bytes_per_param,
            "peak_extra_bytes_per_param": c.peak_extra_bytes_per_param,
            "times_ms": [t * 1e3 for t in c.times],
            "error": c.error,
        })
    return rows


def format_table(result: dict, copy_gbs: float) -> str:
    lines = [
        f"### {result['param_set']}: {result['parameters'] / 1e6:.1f}M parameters in "
        f"{result['tensors']} tensors (copy bandwidth {copy_gbs:.1f} GB/s)",
        "",
        "| contender | median ms | range ms | us/tensor | GB/s | % of copy | x torch fused "
        "| x torch foreach | x AdamHD fused | state B/param | peak extra B/param |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if r["error"]:
            lines.append(f"| {r['name']} | failed: {r['error']} | | | | | | | | | |")
            continue
        lines.append(
            f"| {r['name']} | {r['median_ms']:.2f} | {r['min_ms']:.2f}-{r['max_ms']:.2f} | "
            f"{r['us_per_tensor']:.2f} | {r['gb_per_s']:.1f} | "
            f"{100 * r['gb_per_s'] / copy_gbs:.0f}% | {r['ratio_to_torch_fused']:.2f} | "
            f"{r['ratio_to_torch_foreach']:.2f} | {r.get('ratio_to_adamhd_fused', math.nan):.2f} | "
            f"{r['state_bytes_per_param']:.2f} | "
            f"{r['peak_extra_bytes_per_param']:.1f} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], copy_gbs: float, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 8), squeeze=False)
    colors = {"adamhd": "tab:blue", "torch": "tab:orange", "external": "tab:gray"}
    for ax, res in zip(axes[0], results):
        rows = [r for r in res["rows"] if not r["error"]]
        names = [r["name"] for r in rows]
        gbs = [r["gb_per_s"] for r in rows]
        ax.barh(range(len(rows)), gbs, color=[colors[r["family"]] for r in rows])
        ax.set_yticks(range(len(rows)), names, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(copy_gbs, color="k", linestyle="--", label=f"copy {copy_gbs:.1f} GB/s")
        for i, r in enumerate(rows):
            ax.text(r["gb_per_s"], i, f" {r['median_ms']:.0f} ms", va="center", fontsize=7)
        ax.set_xlabel("effective GB/s (28 B/param)")
        ax.set_title(f"{res['param_set']} ({res['parameters'] / 1e6:.0f}M params)")
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _threshold(text: str) -> str:
    """One ``--deltas`` item: ``adaptive`` or a positive number (kept as text)."""
    if text != "adaptive":
        positive_float(text)
    return text


def cmd_step(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(f"threads {torch.get_num_threads()}, torch {torch.__version__}, "
        f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    copy_before = copy_bandwidth()
    log(f"copy bandwidth {copy_before:.1f} GB/s")
    results = []
    for name in args.sets:
        results.append(run_param_set(name, PARAM_SETS[name](args), args, log))
    copy_after = copy_bandwidth()
    copy_gbs = max(copy_before, copy_after)
    tables = [format_table(r, copy_gbs) for r in results]
    report = {
        "command": "adamhd bench step",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "bytes_per_param": BYTES_PER_PARAM,
        "copy_gb_per_s": {"before": copy_before, "after": copy_after},
        "rounds": args.rounds,
        "results": results,
    }
    (out / "step.json").write_text(json.dumps(report, indent=1))
    (out / "step.md").write_text("\n\n".join(tables) + "\n")
    print("\n\n".join(tables))
    if plot(results, copy_gbs, out / "step.png"):
        log(f"wrote {out / 'step.json'}, {out / 'step.md'}, {out / 'step.png'}")
    else:
        log(f"wrote {out / 'step.json'}, {out / 'step.md'} (no matplotlib: no chart)")
    return 0


def add_step_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "step", help="time one optimizer step: AdamHD paths vs torch AdamW (and others)",
        description=(__doc__ or "").split("\n\n")[0])
    paths = ("single", "foreach", "fused")
    p.add_argument("--sets", type=choices_of(PARAM_SETS),
                   default="gpt2-124m,gpt-like,1b-stack,tiny",
                   help=f"comma-separated parameter sets ({', '.join(PARAM_SETS)}); "
                        "default: %(default)s")
    p.add_argument("--layers", type=positive_int, default=1,
                   help="layers of the 1B stack (24 in the full model; default %(default)s)")
    p.add_argument("--rounds", type=positive_int, default=5, help="timed steps per contender")
    p.add_argument("--tiny", type=positive_int, default=1000,
                   help="tensors of 16 elements in the 'tiny' set (default %(default)s)")
    p.add_argument("--kernel-options", action="store_true",
                   help="add the fused kernel's options (cautious, l2, atan2, softplus)")
    p.add_argument("--survey", action="store_true",
                   help="add Adafactor, SM3 and SMMF on their single and foreach paths")
    p.add_argument("--compile", action="store_true",
                   help="add torch.compile(opt.step) of torch's fused AdamW and AdamHD's default")
    p.add_argument("--paths", type=choices_of(paths), default="single,foreach,fused",
                   help="AdamHD paths")
    p.add_argument("--torch", type=choices_of(paths), default="single,foreach,fused",
                   help="torch AdamW paths (the ratios need fused and foreach)")
    p.add_argument("--deltas", type=list_of(_threshold), default="adaptive,0.05",
                   help="AdamHD thresholds: 'adaptive' and/or fixed numbers")
    p.add_argument("--forms", type=choices_of(("explicit", "proximal")),
                   default="explicit,proximal", help="AdamHD decay forms")
    p.add_argument("--options", type=_adamhd_options, default="",
                   help="AdamHD options, each timed on every path: comma-separated key=value "
                        "(join several with +), e.g. update=atan2,cautious=True+trust_ratio=True")
    p.add_argument("--no-external", dest="external", action="store_false",
                   help="skip heavyball / pytorch_optimizer even if installed")
    p.add_argument("--threads", type=nonneg_int, default=0,
                   help="torch threads (default: torch's)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall, or cpu: the calling thread's CPU time (with --threads 1: a step "
                        "without the time other jobs hold the core; default %(default)s)")
    p.add_argument("--out", default="runs/bench", help="output folder (default %(default)s)")
    p.set_defaults(func=cmd_step)


# for `python -m adamhd.bench.step`
if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="adamhd bench")
    add_step_parser(parser.add_subparsers(dest="bench_command", required=True))
    parsed = parser.parse_args()
    raise SystemExit(parsed.func(parsed))

