"""Precision of Adafactor's factored ``1/sqrt(V)``, ``V = R C / mean(R)``, in float32 against
float64, for four ways of computing it (``python -m adamhd.bench.precision``).

* ``rsqrt factors`` (transformers, fairseq): ``rsqrt(R/mean(R)) * rsqrt(C)``
* ``V, rsqrt`` (torch.optim.Adafactor, without its eps clamp): ``rsqrt(R C / mean(R))``
* ``ratio, sqrt last`` (the seed's fix): ``sqrt((mean(R)/R) / C)``
* ``adamhd``: the seed's fix, and the transformers form where the ratio leaves the float range

Statistics ``R, C``: the factors a few Adafactor steps leave in a small GPT (random tokens) and in
a ReLU MLP whose inputs have always-zero features and whose hidden layer has dead units (whole
zero rows and columns of gradient, as in MNIST's blank border pixels), plus synthetic
log-uniform factors over moderate and very wide ranges. The reference is computed in float64 from
the same float32 factors, so only the formula's rounding is measured.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from adamhd.optim.adafactor import Adafactor, inverse_sqrt_factored

Form = Callable[[Tensor, Tensor], Tensor]

FORMS: dict[str, Form] = {
    "rsqrt factors (transformers)": lambda r, c: (
        (r / r.mean(-1, keepdim=True)).rsqrt().unsqueeze(-1) * c.rsqrt().unsqueeze(-2)
    ),
    "V, rsqrt (torch)": lambda r, c: (
        (r.unsqueeze(-1) * c.unsqueeze(-2)) / r.mean(-1)[..., None, None]
    ).rsqrt(),
    "ratio, sqrt last (seed)": lambda r, c: (
        (r.mean(-1, keepdim=True) / r).unsqueeze(-1) / c.unsqueeze(-2)
    ).sqrt(),
    "adamhd (seed + fallback)": inverse_sqrt_factored,
}


def _factors(opt: Adafactor) -> list[tuple[Tensor, Tensor]]:
    return [(s["exp_avg_sq_row"].clone(), s["exp_avg_sq_col"].clone())
            for s in opt.state.values() if "exp_avg_sq_row" in s]


def gpt_factors(steps: int = 5) -> list[tuple[Tensor, Tensor]]:
    from adamhd.lab.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, context=32, n_layer=2, n_head=2, n_embd=64))
    opt = Adafactor(model.parameters())
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        tokens = torch.randint(0, 256, (8, 33), generator=g)
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
    return _factors(opt)


def sparse_mlp_factors(steps: int = 5) -> list[tuple[Tensor, Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    with torch.no_grad():
        model[0].bias[:32] = -100.0  # 32 dead hidden units: zero rows of W1's gradient
    opt = Adafactor(model.parameters())
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.rand(32, 64, generator=g)
        x[:, :16] = 0.0  # 16 always-blank inputs: zero columns of W1's gradient
        y = torch.randint(0, 10, (32,), generator=g)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return _factors(opt)


def synthetic_factors(low: float, high: float, shape=(256, 512)) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(2)

    def log_uniform(n: int) -> Tensor:
        u = torch.rand(n, generator=g, dtype=torch.float64)
        return torch.exp(math.log(low) + u * (math.log(high) - math.log(low))).float()

    return [(log_uniform(shape[0]), log_uniform(shape[1])) for _ in range(4)]


def measure(factors: list[tuple[Tensor, Tensor]]) -> dict[str, dict[str, float]]:
    """Per form: mean and max relative error (finite float64 entries), non-finite count."""
    out = {}
    for name, form in FORMS.items():
        errors, bad, n = [], 0, 0
        for r, c in factors:
            got = form(r.float(), c.float()).double()
            r64, c64 = r.double(), c.double()
            want = (r64.unsqueeze(-1) * c64.unsqueeze(-2) / r64.mean(-1)[..., None, None]).rsqrt()
            finite = torch.isfinite(want) & (want < torch.finfo(torch.float32).max)
            bad += int((~torch.isfinite(got) & finite).sum())
            ok = finite & torch.isfinite(got)
            errors.append(((got - want).abs() / want)[ok])
            n += int(finite.sum())
        err = torch.cat(errors)
        out[name] = {"mean": float(err.mean()), "max": float(err.max()), "non_finite": bad,
                     "entries": n}
    return out


CASES: dict[str, Callable[[], list[tuple[Tensor, Tensor]]]] = {
    "small GPT (5 steps)": gpt_factors,
    "ReLU MLP: dead units + blank inputs": sparse_mlp_factors,
    "log-uniform 1e-12..1e2": lambda: synthetic_factors(1e-12, 1e2),
    "log-uniform 1e-30..1e10": lambda: synthetic_factors(1e-30, 1e10),
}


def run(cases: list[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    return {name: measure(CASES[name]()) for name in (cases or list(CASES))}


def format_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    ulp = 2.0**-24
    lines = ["| statistics | form | mean rel. error (ulp) | max rel. error (ulp) | non-finite |",
             "|---|---|---|---|---|"]
    for case, forms in results.items():
        for form, m in forms.items():
            lines.append(f"| {case} | {form} | {m['mean'] / ulp:.3f} | {m['max'] / ulp:.2f} | "
                         f"{m['non_finite']} of {m['entries']} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")


def command(args: argparse.Namespace) -> int:
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise ValueError(f"--cases: unknown {', '.join(unknown)} (known: {', '.join(CASES)})")
    torch.set_num_threads(1)
    print(format_table(run(cases)))
    return 0


def main(argv: list[str] | None = None) -> int:
    from adamhd.bench import standalone

    return standalone("precision", __doc__.splitlines()[0], add_arguments, command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
