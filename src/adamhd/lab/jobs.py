"""Running a list of independent training runs: in this process, in N local worker processes
(`--jobs N`, one thread each by default), on a Ray cluster (`--ray`), or one shard of the list
(`--shard i/N`) so that any batch scheduler can run the parts; every run writes its own folder,
so the parts merge by reading the folders (`adamhd report`).

A run's numbers do not depend on where it ran: it is seeded by its own config, and with the same
thread count the same run gives the same bits in any process.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from adamhd.lab import dist
from adamhd.lab.data import Corpus
from adamhd.lab.train import RunConfig, torch_threads, train_run


@dataclass(frozen=True)
class Task:
    cfg: RunConfig
    path: str
    label: str


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/N' (0 <= i < N) -> (i, N); None -> None."""
    if text is None:
        return None
    head, sep, tail = text.partition("/")
    try:
        i, n = int(head), int(tail)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard expects i/N with 0 <= i < N, e.g. 0/4, got {text!r}")
    return i, n


def shard_of(tasks: list[Task], shard: tuple[int, int] | None) -> list[Task]:
    """Round-robin: task k belongs to shard k mod N (neighbouring tasks spread over shards)."""
    if shard is None:
        return list(tasks)
    i, n = shard
    return tasks[i::n]


def _train(task: Task, corpus: Corpus, resume: bool, progress: bool) -> dict | None:
    return train_run(task.cfg, corpus, Path(task.path), resume=resume, progress=progress,
                     label=task.label)


_WORKER: dict = {}


def _init_worker(corpus: Corpus, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER["corpus"] = corpus


def _work(task: Task, resume: bool) -> str:
    _train(task, _WORKER["corpus"], resume, False)
    return task.label


def run_tasks(tasks: list[Task], corpus: Corpus, *, resume: bool = False, progress: bool = True,
              jobs: int = 1, threads: int | None = None, fresh: bool = False,
              use_ray: bool = False, fsdp: bool = False) -> None:
    """Train every task. `fresh`: delete a task's old folder first (not with `resume`)."""
    if fresh and not resume and dist.is_main():
        for task in tasks:
            if Path(task.path).exists():
                shutil.rmtree(task.path)
    if use_ray:
        return _run_ray(tasks, corpus, resume, threads or 1)
    if jobs <= 1 or len(tasks) <= 1:
        with torch_threads(threads):
            for task in tasks:
                dist.barrier()
                train_run(task.cfg, corpus, Path(task.path), resume=resume, progress=progress,
                          label=task.label, fsdp=fsdp)
        return None
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # a fresh interpreter: no inherited threads or torch state
    with ctx.Pool(min(jobs, len(tasks)), initializer=_init_worker,
                  initargs=(corpus, threads or 1)) as pool:
        pending = [pool.apply_async(_work, (t, resume)) for t in tasks]
        for k, result in enumerate(pending, 1):
            label = result.get()
            if progress:
                print(f"finished {label} ({k}/{len(tasks)})", file=sys.stderr, flush=True)
    return None


def _run_ray(tasks: list[Task], corpus: Corpus, resume: bool, threads: int) -> None:
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs the `ray` package: pip install 'ray[default]'") from None
    if not ray.is_initialized():
        ray.init()  # joins a running cluster (RAY_ADDRESS) or starts a local one

    @ray.remote(num_cpus=threads)
    def remote(task: Task, corpus_ref) -> str:
        _init_worker(corpus_ref, threads)
        return _work(task, resume)

    ref = ray.put(corpus)
    ray.get([remote.remote(t, ref) for t in tasks])
