"""One training run: one optimizer, one seed.

Linear warmup then cosine decay to `min_lr_ratio * lr`, gradient clipping, periodic evaluation,
metrics as JSONL, and checkpoints that hold everything needed to continue bit for bit: model,
optimizer (and grad scaler), data position, RNG states, metrics and elapsed time.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from adamhd.lab import choice, dist, tails
from adamhd.lab import evaluate as ev
from adamhd.lab.data import EVAL_SUBSET_SEED, Corpus, check_context, train_batch
from adamhd.lab.model import GPT, make_config, prunable_weights
from adamhd.lab.optimizers import parse_spec

CHECKPOINT_FORMAT = "adamhd-lab-checkpoint"
CHECKPOINT_VERSION = 1
DTYPES = ("float32", "bfloat16", "float16")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed: unreadable, of another format, or of another run."""


@dataclass
class RunConfig:
    optimizer: str = "adamw"  # a spec, e.g. "adamhd:delta_scale=2.0"
    seed: int = 0
    steps: int = 300
    model: str = "tiny"
    batch_size: int = 32
    context: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: int | None = None  # default: 10% of steps
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    dropout: float = 0.0
    eval_every: int = 25
    eval_windows: int = 64  # periodic evaluations: a fixed seeded subset of validation windows
    final_eval_windows: int = 0  # final validation / second-domain losses: 0 = the full sets
    prune_windows: int = 64  # each evaluation of a pruned model: a fixed seeded subset
    choice_items: int = 200  # items of the multiple-choice continuation task (0: none)
    domains: bool = True  # measure the second-domain losses at the end (a grid point skips them)
    ckpt_every: int = 50
    prune: bool = True  # measure the pruning curves at the end (the sweep skips them)
    device: str = "cpu"
    dtype: str = "float32"
    compile: bool = False
    tensorboard: str = ""  # a folder: histograms of weights, gradients, updates (tails.Watch)
    corpus_key: str = ""  # identifies data + tokenizer; set by the caller

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1 or self.context < 2:
            raise ValueError("batch size must be >= 1 and context >= 2")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0 and weight_decay >= 0")
        if self.warmup is not None and not 0 <= self.warmup <= self.steps:
            raise ValueError(f"warmup must be between 0 and steps ({self.steps}), "
                             f"got {self.warmup}")
        if not (math.isfinite(self.lr) and math.isfinite(self.weight_decay)):
            raise ValueError("lr and weight_decay must be finite")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")

    @property
    def eval_batch(self) -> int:
        """Windows per evaluation batch: larger than a small training batch (no gradients)."""
        return max(64, self.batch_size)

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else max(1, self.steps // 10)

    def fingerprint(self) -> dict:
        """What decides the numbers: a checkpoint is resumed only into a run that matches it."""
        d = asdict(self)
        for k in ("ckpt_every", "compile", "tensorboard"):  # these change no value
            d.pop(k)
        return d


def lr_at(step: int, cfg: RunConfig) -> float:
    """Linear warmup over `warmup_steps`, then cosine from lr down to min_lr_ratio * lr."""
    warm = cfg.warmup_steps
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, cfg.steps - warm))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, step: int, cfg: RunConfig) -> float:
    """Set every group's lr to the schedule's value at `step`; returns it."""
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


# ----------------------------------------------------------------------------------------------
# RNG states and checkpoints


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write `path` atomically (a temporary file, then a rename): a kill mid-save leaves the
    previous checkpoint intact, and a stale temporary file is only ever overwritten, never read.

    Written through a Python file, so that a full disk is an `OSError` with its errno (torch's own
    file writer reports it as a bare C++ stream error); the temporary file is then removed and a
    full disk is reported as one line naming the folder."""
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            raise OSError(exc.errno, "no space left on the device to write its checkpoint (any "
                          "earlier one is kept): free space, then continue with --resume",
                          str(path.parent)) from None
        raise
    os.replace(tmp, path)


def load_checkpoint(path: Path, cfg: RunConfig) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is reported the same way
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}). It is not "
            "restarted silently: delete it (or the run folder) to start this run over."
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an adamhd lab checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {ckpt.get('version')}, this code reads "
            f"{CHECKPOINT_VERSION}"
        )
    mismatch = mismatched(ckpt.get("fingerprint", {}), cfg.fingerprint())
    if mismatch:
        raise CheckpointError(
            f"checkpoint {path} belongs to a different run; differing settings: {mismatch}. "
            "Resume with the same options, or use another --out."
        )
    return ckpt


def mismatched(saved: dict, current: dict) -> str:
    keys = sorted(set(saved) | set(current))
    diffs = [f"{k}: saved {saved.get(k)!r} vs now {current.get(k)!r}"
             for k in keys if saved.get(k) != current.get(k)]
    return "; ".join(diffs)


# ----------------------------------------------------------------------------------------------
# The run


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


def check_dtype(dtype: str, device: torch.device) -> None:
    if dtype == "float16" and device.type != "cuda":
        raise ValueError("--dtype float16 needs a CUDA device; use bfloat16 or float32 on CPU")


def build_model(cfg: RunConfig, vocab_size: int) -> GPT:
    torch.manual_seed(cfg.seed)
    return GPT(make_config(cfg.model, vocab_size, context=cfg.context, dropout=cfg.dropout))


class _Metrics:
    """Metrics kept in memory (they go into checkpoints) and appended to metrics.jsonl."""

    def __init__(self, path: Path, rows: list[dict]):
        self.path = path
        self.rows = list(rows)
        # rewrite from the rows we trust: lines logged after the last checkpoint are dropped
        with open(path, "w") as f:
            for row in self.rows:
                f.write(json.dumps(row) + "\n")
        self.file = open(path, "a")  # noqa: SIM115 - closed in close()

    def log(self, row: dict) -> None:
        self.rows.append(row)
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


@dataclass
class _Clock:
    """Seconds spent so far: training steps, training plus in-loop overhead, periodic evaluation."""

    train: float = 0.0
    wall: float = 0.0
    eval: float = 0.0

    def stepped(self, seconds: float) -> None:
        self.train += seconds
        self.wall += seconds


def train_run(cfg: RunConfig, corpus: Corpus, run_dir: str | Path, *, resume: bool = False,
              stop_after: int | None = None, progress: bool = True,
              label: str | None = None, fsdp: bool = False) -> dict | None:
    """Train one run in `run_dir`; return its results (also written to results.json).

    `resume`: continue from run_dir/checkpoint.pt if it exists (a finished run is not redone).
    `stop_after`: stop (as if killed) right after the checkpoint at this step; returns None.
    Under torchrun (see `dist`): DDP, or FSDP2 with `fsdp`; rank 0 writes everything and returns
    the results, the other ranks return None.
    """
    run_dir = Path(run_dir)
    device, spec = _prepare(cfg, corpus, run_dir)
    if resume and (run_dir / "results.json").exists():
        done = _finished_results(cfg, run_dir)
        return done if dist.is_main() else None
    run = _Run(cfg, corpus, run_dir, device, spec, resume=resume, fsdp=fsdp)
    bar = _progress(progress and run.main, cfg.steps, run.start, label or spec.label)
    try:
        if not _train_loop(run, bar, stop_after):
            return None
    finally:
        if bar is not None:
            bar.close()
        run.metrics.close()
        run.watch.close()
    return run.results()


def _prepare(cfg: RunConfig, corpus: Corpus, run_dir: Path):
    """Checks before anything is built; rank 0 makes the run folder. Returns (device, spec)."""
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    check_context(corpus, cfg.context)
    device = resolve_device(cfg.device)
    check_dtype(cfg.dtype, device)
    spec = parse_spec(cfg.optimizer)
    dist.local_batch(cfg.batch_size)  # the global batch must split evenly across the ranks
    return device, spec


def _finished_results(cfg: RunConfig, run_dir: Path) -> dict:
    """The results of a finished run, refused if they were made with other settings."""
    results_path = run_dir / "results.json"
    done = json.loads(results_path.read_text())
    diff = mismatched(done.get("config", {}), cfg.fingerprint())
    if diff:
        raise CheckpointError(f"{results_path} is a finished run with other settings: {diff}")
    return done


def _train_loop(run: _Run, bar, stop_after: int | None) -> bool:
    """The steps from `run.start` on; False when stopped after `stop_after` (as if killed)."""
    cfg = run.cfg
    last_val = run.last_val_loss()
    if run.start == 0:
        last_val = run.evaluate(0)
    run.model.train()
    for step in range(run.start, cfg.steps):
        done = step + 1
        t0 = time.perf_counter()
        lr = run.set_lr(step)
        loss = run.forward_backward(*run.batch(step))
        grad_norm = run.clip_gradients()
        before = run.watch.before(done)
        run.optimizer_step(loss)
        loss_value = dist.mean_over_ranks(loss)  # synchronises the device: honest timing
        run.clock.stepped(time.perf_counter() - t0)
        run.log_train(done, lr, loss_value, grad_norm)
        t1 = time.perf_counter()
        run.watch.after(done, before, run.metrics)
        if done % cfg.eval_every == 0 or done == cfg.steps:
            last_val = run.evaluate(done)
        if done % cfg.ckpt_every == 0 or done == cfg.steps or done == stop_after:
            run.checkpoint(done)
        run.clock.wall += time.perf_counter() - t1
        _advance(bar, loss_value, last_val)
        if done == stop_after:
            return False
    return True


class _Run:
    """One run's model, optimizer, metrics and clocks, and the parts of a training step."""

    def __init__(self, cfg: RunConfig, corpus: Corpus, run_dir: Path, device: torch.device,
                 spec, *, resume: bool, fsdp: bool):
        self.cfg, self.corpus, self.run_dir, self.device, self.spec = (cfg, corpus, run_dir,
                                                                       device, spec)
        self.main = dist.is_main()
        self.ckpt_path = run_dir / "checkpoint.pt"
        self.model = build_model(cfg, corpus.vocab_size).to(device)
        self.par = dist.Parallel(self.model, fsdp=fsdp)  # the optimizer is built after wrapping
        self.optimizer = spec.build(self.model, cfg.lr, cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == "float16")
        rows = self._restore() if resume else self._fresh()
        if self.main:
            (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        self.step_model = torch.compile(self.par.forward) if cfg.compile else self.par.forward
        self.metrics = _Metrics(run_dir / "metrics.jsonl", rows) if self.main else _NoMetrics(rows)
        self.tokens_per_step = cfg.batch_size * cfg.context
        board = (Path(cfg.tensorboard) / run_dir.parent.name / run_dir.name
                 if cfg.tensorboard else "")
        self.watch = tails.Watch(self.model, cfg.eval_every, cfg.steps, board, self.start,
                                 self.main)

    def _fresh(self) -> list[dict]:
        """Start at step 0; returns the (no) metric rows so far."""
        self.start, self.clock = 0, _Clock()
        torch.manual_seed(self.cfg.seed + 1_000_003)  # dropout stream, distinct from the init
        return []

    def _restore(self) -> list[dict]:
        """Continue from the checkpoint, if there is one; returns the metric rows it kept."""
        if not self.ckpt_path.exists():
            if self.main:
                print(f"{self.run_dir}: no checkpoint yet, this run starts at step 0",
                      file=sys.stderr)
            return self._fresh()
        ckpt = load_checkpoint(self.ckpt_path, self.cfg)
        self.par.load_state_dicts(self.optimizer, ckpt["model"], ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        self.start = ckpt["data"]["next_step"]
        self.clock = _Clock(ckpt["train_seconds"], ckpt["wall_seconds"],
                            ckpt.get("eval_seconds", 0.0))
        return ckpt["metrics"]

    def last_val_loss(self) -> float | None:
        return next((r["val_loss"] for r in reversed(self.metrics.rows) if r["kind"] == "eval"),
                    None)

    # the parts of one step, in order

    def set_lr(self, step: int) -> float:
        return set_lr(self.optimizer, step, self.cfg)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the step's batch, on the device."""
        cfg = self.cfg
        x, y = train_batch(self.corpus.train, step, cfg.seed, cfg.batch_size, cfg.context)
        return dist.my_slice(x).to(self.device), dist.my_slice(y).to(self.device)

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with ev.autocast_for(self.device, self.cfg.dtype):
            _, loss = self.step_model(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        return loss

    def clip_gradients(self) -> torch.Tensor:
        """Unscale (float16) and clip the gradients; returns their norm before clipping."""
        self.scaler.unscale_(self.optimizer)
        return torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)

    def optimizer_step(self, loss: torch.Tensor) -> None:
        self.scaler.step(self.optimizer, **self.spec.step_kwargs(loss.detach()))
        self.scaler.update()

    def log_train(self, done: int, lr: float, loss_value: float, grad_norm) -> None:
        """Log the step's row; a loss that is not finite ends the run with an error."""
        self.metrics.log({"kind": "train", "step": done, "tokens": done * self.tokens_per_step,
                          "time": self.clock.train, "loss": loss_value, "lr": lr,
                          "grad_norm": dist.as_float(grad_norm)})
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"{self.spec.label} seed {self.cfg.seed}: loss is "
                                     f"{loss_value} at step {done}; try a lower --lr")

    # evaluation, checkpoints, results

    def _plain_copy(self) -> GPT:
        with torch.random.fork_rng(devices=[]):  # the copy's init must not move the RNG
            return GPT(self.model.cfg).to(self.device)

    def evaluate(self, step: int) -> float | None:
        """Validation loss on the fixed subset (rank 0, on the full weights), logged and timed."""
        t0 = time.perf_counter()
        try:
            full = self.par.full_model(self._plain_copy)
            if full is None:
                return None
            cfg = self.cfg
            val = ev.evaluate_loss(full, self.corpus.val, context=cfg.context,
                                   batch_size=cfg.eval_batch, max_windows=cfg.eval_windows,
                                   device=self.device, dtype=cfg.dtype,
                                   subset_seed=EVAL_SUBSET_SEED)
            self.metrics.log({"kind": "eval", "step": step, "tokens": step * self.tokens_per_step,
                              "time": self.clock.train, "wall": self.clock.wall,
                              "val_loss": val, "val_ppl": ev.perplexity(val),
                              "weights": ev.weight_stats(full)})
            return val
        finally:
            self.clock.eval += time.perf_counter() - t0

    def checkpoint(self, step: int) -> None:
        model_state, optimizer_state = self.par.state_dicts(self.optimizer)
        if not self.main:
            return
        cfg, clock = self.cfg, self.clock
        save_checkpoint(self.ckpt_path, {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "fingerprint": cfg.fingerprint(), "step": step,
            "model": model_state, "optimizer": optimizer_state,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "data": {"sampler": "random windows, generator seeded by (seed, step)",
                     "seed": cfg.seed, "next_step": step},
            "rng": _rng_state(), "metrics": self.metrics.rows,
            "train_seconds": clock.train, "wall_seconds": clock.wall,
            "eval_seconds": clock.eval,
        })

    def results(self) -> dict | None:
        """The end-of-run measurements (rank 0 writes results.json; other ranks get None)."""
        full = self.par.full_model(self._plain_copy)
        results = None
        if self.main:
            results = finish_run(self.cfg, self.corpus, full, self.device, self.metrics.rows,
                                 self.clock.train, self.clock.wall)
            results["timing"]["periodic_eval_seconds"] = self.clock.eval
            results["optimizer_state_bytes_per_param"] = state_bytes_per_param(self.optimizer,
                                                                               self.model)
            results["processes"] = dist.world()
            (self.run_dir / "results.json").write_text(json.dumps(results, indent=1))
        dist.barrier()  # the other ranks wait for rank 0's final measurements
        return results


def _advance(bar, loss_value: float, last_val: float | None) -> None:
    if bar is not None:
        bar.set_postfix(loss=f"{loss_value:.3f}", val=f"{last_val:.3f}", refresh=False)
        bar.update(1)


class _NoMetrics:
    """The metrics of a rank other than 0: nothing is kept or written."""

    def __init__(self, rows: list[dict]):
        self.rows = list(rows)

    def log(self, row: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                leave=True)


class _Laps:
    """Seconds between successive `lap` calls, by name."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._clock
        self._clock = now


def finish_run(cfg: RunConfig, corpus: Corpus, model: GPT, device, rows, train_seconds,
               wall_seconds) -> dict:
    """The end-of-run measurements: final losses on the full sets, second domains, the
    multiple-choice task, histogram, pruning (on a fixed subset), each timed."""
    laps = _Laps()

    def loss_on(tokens, windows, subset_seed=None):
        return ev.evaluate_loss(model, tokens, context=cfg.context, batch_size=cfg.eval_batch,
                                max_windows=windows, device=device, dtype=cfg.dtype,
                                subset_seed=subset_seed)

    val = loss_on(corpus.val, cfg.final_eval_windows)
    domains = {name: loss_on(tokens, cfg.final_eval_windows)
               for name, tokens in corpus.eval_sets.items()} if cfg.domains else {}
    laps.lap("final_eval_seconds")
    task = choice.accuracy(model, corpus.choice[:cfg.choice_items], context=cfg.context,
                           batch_size=cfg.eval_batch, device=device)
    laps.lap("choice_seconds")
    n_prunable = sum(w.numel() for w in prunable_weights(model).values())
    pruning = _pruning_curves(cfg, model, n_prunable,
                              lambda m: loss_on(corpus.val, cfg.prune_windows, EVAL_SUBSET_SEED))
    laps.lap("prune_seconds")
    return {
        **_run_summary(cfg, model, n_prunable, train_seconds, wall_seconds),
        "timing": laps.seconds,
        "final_val_loss": val,
        "final_val_ppl": ev.perplexity(val),
        "final_train_loss": float(np.mean([r["loss"] for r in rows if r["kind"] == "train"][-20:])),
        "domains": {k: {"loss": v, "ppl": ev.perplexity(v)} for k, v in domains.items()},
        "choice": task,
        "weights": ev.weight_stats(model),
        "histogram": ev.magnitude_histogram(model),
        "pruning": pruning,
        "optimizer_state_bytes_per_param": None,  # filled in by train_run (needs the optimizer)
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
    }


def _pruning_curves(cfg: RunConfig, model: GPT, n_prunable: int, loss) -> dict:
    """Global and per-layer magnitude-pruning curves (none when `cfg.prune` is off)."""
    pruning = {}
    for mode in ("global", "layer") if cfg.prune else ():
        curve = ev.pruning_curve(model, loss, mode, refine=2)
        curve["bytes"] = ev.bytes_saved(n_prunable, model.num_params(), curve["max_sparsity"])
        pruning[mode] = curve
    return pruning


def _run_summary(cfg: RunConfig, model: GPT, n_prunable: int, train_seconds: float,
                 wall_seconds: float) -> dict:
    return {
        "config": cfg.fingerprint(),
        "label": parse_spec(cfg.optimizer).label,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "tokens": cfg.steps * cfg.batch_size * cfg.context,
        "params": model.num_params(),
        "prunable_params": n_prunable,
        "train_seconds": train_seconds,
        "wall_seconds": wall_seconds,
        "seconds_per_step": train_seconds / cfg.steps,
    }


def state_bytes_per_param(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> float:
    """Bytes of tensors in the optimizer's state per model parameter (this process's share)."""
    seen, total = set(), 0
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value) and value.data_ptr() not in seen:
                seen.add(value.data_ptr())
                total += value.numel() * value.element_size()
    return total / max(1, sum(p.numel() for p in model.parameters()))


def load_metrics(run_dir: str | Path) -> list[dict]:
    with open(Path(run_dir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def config_from_dict(d: dict) -> RunConfig:
    names = {f.name for f in fields(RunConfig)}
    return RunConfig(**{k: v for k, v in d.items() if k in names})


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Use `n` intra-op threads (all cores by default) for the duration."""
    old = torch.get_num_threads()
    torch.set_num_threads(n or os.cpu_count() or 1)
    try:
        yield
    finally:
        torch.set_num_threads(old)
