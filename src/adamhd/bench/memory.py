"""Optimizer-state bytes per parameter and step time relative to torch's fused AdamW, for AdamW,
AdamHD and each optimizer of ``adamhd.optim``, on the parameters of a small GPT
(``python -m adamhd.bench.memory``; ``run()`` returns the rows).

Method: each contender gets its own copy of the model's parameters and the same random gradients;
one untimed step creates its state, whose bytes (every tensor in ``optimizer.state``, each storage
counted once) are divided by the number of parameters. Then ``--rounds`` rounds each time one step
of every contender in a rotated order; the figure is the median, divided by torch's fused AdamW's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from adamhd.argtypes import nonneg_int, positive_int

Factory = Callable[[list[Tensor]], torch.optim.Optimizer]
BASELINE = "torch AdamW fused"


@dataclass
class Row:
    name: str
    state_bytes_per_param: float
    step_ms: float
    relative_time: float = float("nan")


def gpt_params(n_embd: int = 256, n_layer: int = 4, vocab: int = 4096) -> list[Tensor]:
    from adamhd.lab.model import GPT, GPTConfig

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=vocab, context=128, n_layer=n_layer, n_head=4, n_embd=n_embd)
    return [p.detach() for p in GPT(cfg).parameters()]


def contenders(external: bool = True) -> dict[str, Factory]:
    """The optimizers timed; ``external``: with torchao's and bitsandbytes' when installed."""
    import adamhd as hd

    out: dict[str, Factory] = {
        BASELINE: lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
        "torch AdamW foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True),
        "AdamHD (default path)": lambda ps: hd.AdamHD(ps, lr=1e-3),
        "AdamHD foreach": lambda ps: hd.AdamHD(ps, lr=1e-3, foreach=True),
        "AdamHD state_dtype=bfloat16": lambda ps: hd.AdamHD(ps, lr=1e-3, state_dtype="bfloat16"),
        "AdamHD state_dtype=int8": lambda ps: hd.AdamHD(ps, lr=1e-3, state_dtype="int8"),
        "AdamHD state_dtype=bfloat16 foreach": lambda ps: hd.AdamHD(ps, lr=1e-3,
                                                                     state_dtype="bfloat16",
                                                                     foreach=True),
        "AdamHD state_dtype=int8 foreach": lambda ps: hd.AdamHD(ps, lr=1e-3, state_dtype="int8",
                                                                 foreach=True),
        "NSGDA": lambda ps: hd.NSGDA(ps, lr=1e-3),
        "AdaLo": lambda ps: hd.AdaLo(ps),
        "Adafactor": lambda ps: hd.Adafactor(ps),
        "torch Adafactor": lambda ps: torch.optim.Adafactor(ps),
        "SMMF": lambda ps: hd.SMMF(ps),
        "SM3": lambda ps: hd.SM3(ps),
        "AdaMomentum": lambda ps: hd.AdaMomentum(ps),
        "FCAdam (K=10)": lambda ps: hd.FCAdam(ps),
        "Amos": lambda ps: hd.Amos(ps),
        "AM-SGD": lambda ps: hd.AdaptiveMemorySGD(ps, lr=1e-3),
        "torch SGD momentum foreach": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9,
                                                                 foreach=True),
    }
    return {**out, **external_contenders()} if external else out


def external_contenders() -> dict[str, Factory]:
    """torchao's low-memory AdamW (8-bit, 4-bit, fp8 states) and bitsandbytes' 8-bit AdamW,
    when they import."""
    out: dict[str, Factory] = {}
    try:
        from torchao.optim import AdamW4bit, AdamW8bit, AdamWFp8

        out["torchao AdamW8bit"] = lambda ps: AdamW8bit(ps, lr=1e-3)
        out["torchao AdamW4bit"] = lambda ps: AdamW4bit(ps, lr=1e-3)
        out["torchao AdamWFp8"] = lambda ps: AdamWFp8(ps, lr=1e-3)
    except Exception:  # not installed or broken: not listed
        pass
    try:
        import bitsandbytes

        out["bitsandbytes AdamW8bit"] = lambda ps: bitsandbytes.optim.AdamW8bit(ps, lr=1e-3)
    except Exception:
        pass
    return out


def _plain_tensors(value: object) -> list[Tensor]:
    """The plain tensors that hold ``value``'s data (a tensor subclass such as torchao's
    quantised states: its inner tensors, ``__tensor_flatten__``)."""
    if not torch.is_tensor(value):
        return []
    if hasattr(value, "__tensor_flatten__") and type(value) is not torch.Tensor:
        names, _ = value.__tensor_flatten__()
        return [t for name in names for t in _plain_tensors(getattr(value, name))]
    return [value]


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state tensors, each storage counted once."""
    seen, total = set(), 0
    for state in opt.state.values():
        for value in state.values():
            for t in _plain_tensors(value):
                key = t.untyped_storage().data_ptr()
                if key not in seen:
                    seen.add(key)
                    total += t.untyped_storage().nbytes()
    return total


def _step(opt: torch.optim.Optimizer) -> None:
    from adamhd import AdaLo

    opt.step(loss=1.0) if isinstance(opt, AdaLo) else opt.step()


def run(rounds: int = 5, names: list[str] | None = None, **model: int) -> list[Row]:
    base = gpt_params(**model)
    numel = sum(p.numel() for p in base)
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(p.shape, generator=g) * 1e-2 for p in base]
    factories = contenders(external=names is None
                           or bool(set(names) - set(contenders(external=False))))
    chosen = names or list(factories)
    if BASELINE not in chosen:
        chosen = [BASELINE, *chosen]
    opts = {}
    for name in chosen:
        params = [p.clone().requires_grad_() for p in base]
        for p, grad in zip(params, grads):
            p.grad = grad.clone()
        opts[name] = factories[name](params)
        _step(opts[name])
    times: dict[str, list[float]] = {name: [] for name in chosen}
    for r in range(rounds):
        for name in chosen[r % len(chosen):] + chosen[: r % len(chosen)]:
            start = time.perf_counter()
            _step(opts[name])
            times[name].append(time.perf_counter() - start)
    rows = [Row(name, state_bytes(opts[name]) / numel, 1e3 * statistics.median(times[name]))
            for name in chosen]
    baseline = next(r.step_ms for r in rows if r.name == BASELINE)
    for row in rows:
        row.relative_time = row.step_ms / baseline
    return rows


def format_table(rows: list[Row], numel: int | None = None) -> str:
    lines = ["| optimizer | state bytes/param | step ms | time / torch fused AdamW |",
             "|---|---|---|---|"]
    lines += [f"| {r.name} | {r.state_bytes_per_param:.3f} | {r.step_ms:.2f} | "
              f"{r.relative_time:.2f}x |" for r in rows]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=positive_int, default=7, help="timed steps per optimizer")
    parser.add_argument("--n-embd", type=positive_int, default=256)
    parser.add_argument("--n-layer", type=positive_int, default=4)
    parser.add_argument("--vocab", type=positive_int, default=4096)
    parser.add_argument("--only", default="", help="comma-separated optimizer names")
    parser.add_argument("--threads", type=nonneg_int, default=0, help="torch threads (0: torch's)")


def command(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in args.only.split(",") if n] or None
    unknown = sorted(set(names or []) - set(contenders()))
    if unknown:
        raise ValueError(f"--only: unknown optimizers {', '.join(unknown)} "
                         f"(known: {', '.join(contenders())})")
    rows = run(args.rounds, names, n_embd=args.n_embd, n_layer=args.n_layer, vocab=args.vocab)
    numel = sum(p.numel() for p in gpt_params(args.n_embd, args.n_layer, args.vocab))
    print(f"GPT-like parameter set: {numel} parameters; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(format_table(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    from adamhd.bench import standalone

    return standalone("memory", __doc__.splitlines()[0], add_arguments, command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
