"""`adamhd compare`: every entrant on every seed, same data / schedule / budget, then the report.

Runs are interleaved (seed 0: adamw, adamhd; seed 1: adamw, adamhd; ...) so that a change in the
machine's load during the comparison hits all entrants alike. Under torchrun every rank runs this,
and rank 0 alone writes (see `dist`).
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from adamhd.lab import dist
from adamhd.lab.data import load_corpus
from adamhd.lab.optimizers import parse_specs
from adamhd.lab.train import RunConfig, torch_threads, train_run


def run_dir(out: Path, slug: str, seed: int) -> Path:
    return out / "runs" / slug / f"seed{seed}"


def corpus_key(corpus) -> str:
    return corpus.key + "".join(f"+{name}" for name in corpus.eval_sets)


def run_compare(*, optimizers: str, seeds: int, base: RunConfig, out: str | Path,
                data: str = "shakespeare", eval_data: list[str] | None = None,
                tokenizer: str = "byte", bpe_vocab: int = 2048, cache_dir: str | None = None,
                resume: bool = False, progress: bool = True, threads: int | None = None,
                argv: list[str] | None = None, build_report: bool = True,
                fsdp: bool = False) -> Path:
    specs = parse_specs(optimizers)
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    out = Path(out)
    eval_data = ["britannica"] if eval_data is None else eval_data
    started = time.time()
    main = dist.is_main()
    if not main:
        dist.barrier()  # rank 0 fills the data cache first, then the others read it
    corpus = load_corpus(data, tokenizer=tokenizer, bpe_vocab=bpe_vocab,
                         eval_sources=eval_data, cache_dir=cache_dir)
    if main:
        dist.barrier()
    base = replace(base, corpus_key=corpus_key(corpus))
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "argv": argv if argv is not None else sys.argv[1:],
        "optimizers": [s.label for s in specs],
        "slugs": {s.label: s.slug for s in specs},
        "seeds": list(range(seeds)),
        "base_config": asdict(base),
        "corpus": corpus.describe(),
        "data": data,
        "eval_data": eval_data,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "processes": dist.world(),
        "parallel": ("fsdp" if fsdp else "ddp") if dist.world() > 1 else "none",
    }
    if main:
        (out / "compare.json").write_text(json.dumps(meta, indent=1))

    total = seeds * len(specs)
    with torch_threads(threads or (dist.default_threads() if dist.world() > 1 else None)):
        meta["threads"] = torch.get_num_threads()
        k = 0
        for seed in range(seeds):
            for spec in specs:
                k += 1
                cfg = replace(base, optimizer=spec.label, seed=seed)
                path = run_dir(out, spec.slug, seed)
                if not resume and path.exists() and main:
                    shutil.rmtree(path)  # a fresh comparison: the old run is replaced
                dist.barrier()
                train_run(cfg, corpus, path, resume=resume, progress=progress,
                          label=f"[{k}/{total}] {spec.label} seed {seed}", fsdp=fsdp)
    meta["train_finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    meta["train_wall_seconds"] = time.time() - started
    if not main:
        return out
    (out / "compare.json").write_text(json.dumps(meta, indent=1))
    if not build_report:
        return out
    from adamhd.lab.report import build_report as _build

    return _build(out)
