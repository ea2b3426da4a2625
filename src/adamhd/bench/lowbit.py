"""Error of AdamHD's low-bit moments (``state_dtype``) on real gradient statistics
(``adamhd bench lowbit``).

Method: a lab GPT (``--model``, byte-level Shakespeare) trains with full-precision AdamHD; after
each of ``--steps`` steps, every weight matrix's moments ``m, v`` are stored in each format and
read back (``adamhd.optim.adamhd.lowbit``: bf16 rounded to nearest, and the int8 block code), and
compared with the float32 values:

* ``m rel err``: median and 99th percentile of ``|m_q - m| / |m|`` over the elements with
  ``m != 0``;
* ``v rel err``: the same for ``v``; ``v zeroed``: the fraction of ``v > 0`` read back as 0;
* ``update rel err``: ``||u_q - u|| / ||u||`` with ``u = m / (sqrt(v) + eps)`` (the step's
  direction; bias corrections cancel in the ratio).

One step's rounding only (the quantisation of one write), not its accumulation over a run: the
lab's loss comparison (``adamhd compare --optimizers adamhd,adamhd-int8,adamhd-bf16``) shows that.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import Tensor

from adamhd.optim.adamhd import lowbit

FORMATS = ("bfloat16", "int8")


def read_back(x: Tensor, fmt: str, signed: bool) -> Tensor:
    """``x`` stored in ``fmt`` and read back (float32)."""
    if fmt == "bfloat16":
        return x.to(torch.bfloat16).float()
    code, scale = lowbit.encode_int8(x, signed)
    return lowbit.decode_int8(code, scale, signed)


def errors(m: Tensor, v: Tensor, fmt: str, eps: float = 1e-8) -> dict[str, float]:
    mq, vq = read_back(m, fmt, True), read_back(v, fmt, False)
    nz_m, nz_v = m != 0, v > 0
    rel_m = ((mq - m).abs() / m.abs())[nz_m]
    rel_v = ((vq - v).abs() / v)[nz_v]
    u, uq = m / (v.sqrt() + eps), mq / (vq.sqrt() + eps)
    return {
        "m_median": rel_m.median().item(), "m_p99": rel_m.quantile(0.99).item(),
        "v_median": rel_v.median().item(), "v_p99": rel_v.quantile(0.99).item(),
        "v_zeroed": (vq[nz_v] == 0).float().mean().item(),
        "update": ((uq - u).norm() / u.norm()).item(),
    }


def run(model_size: str = "mini", steps: tuple[int, ...] = (10, 50, 200),
        seed: int = 0) -> list[dict]:
    """Rows (step, format, errors averaged over the weight matrices)."""
    from adamhd import AdamHD
    from adamhd.lab.data import load_corpus, train_batch
    from adamhd.lab.model import GPT, make_config

    corpus = load_corpus("shakespeare")
    torch.manual_seed(seed)
    cfg = make_config(model_size, corpus.vocab_size)
    model = GPT(cfg)
    opt = AdamHD(model.parameters(), lr=1e-3, weight_decay=0.1, foreach=False)
    matrices = [p for p in model.parameters() if p.dim() == 2]
    rows = []
    for step in range(1, max(steps) + 1):
        x, y = (torch.as_tensor(a, dtype=torch.long)
                for a in train_batch(corpus.train, step, seed, 16, cfg.context))
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in steps:
            for fmt in FORMATS:
                per = [errors(opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"], fmt)
                       for p in matrices]
                rows.append({"step": step, "format": fmt, "loss": loss.item(),
                             **{k: statistics.mean(r[k] for r in per) for k in per[0]}})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| step | format | m rel err median / p99 | v rel err median / p99 | v zeroed | "
             "update rel err |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['format']} | {r['m_median']:.4f} / {r['m_p99']:.4f} | "
              f"{r['v_median']:.4f} / {r['v_p99']:.4f} | {r['v_zeroed']:.2e} | "
              f"{r['update']:.4f} |" for r in rows]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="mini", help="lab model size (default %(default)s)")
    parser.add_argument("--steps", default="10,50,200",
                        help="steps after which the moments are measured (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)


def command(args: argparse.Namespace) -> int:
    items = [s for s in args.steps.split(",") if s]
    if not items or not all(s.isdigit() and int(s) >= 1 for s in items):
        raise ValueError(f"--steps: positive step numbers, comma-separated; got {args.steps!r}")
    steps = tuple(int(s) for s in items)
    print(format_table(run(args.model, steps, args.seed)))
    return 0
