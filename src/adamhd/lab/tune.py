"""`adamhd tune`: every entrant tuned with the same budget, at several model scales.

One Optuna study per (scale, entrant), named `PREFIX/SCALE/ENTRANT`, in one storage (SQLite by
default, any database URL Optuna takes). A study holds:

- `trials` tuning trials, each a short run on a *tuning seed*, sampled over the entrant's declared
  space (lr and weight_decay log-uniform, plus at most one key hyperparameter declared next to the
  entrant's registration, `tune=` in `optimizers.register`); the periodic validation loss is
  reported to an ASHA (successive halving) or Hyperband pruner, which stops hopeless trials;
- the scored re-runs of its best setting on the *fresh seeds* (disjoint from the tuning seeds),
  kept as study user attributes `final:SEED`: only these are ranked (no winner's curse).

A study is the unit of work: it is done by one worker at a time (a process of `--jobs`, a Ray task
of `--ray`, or one `--shard i/N` of the list on any machine), so its trials are the same wherever
and in whatever order the studies run. Resuming: the same command again. A trial interrupted by a
kill (its heartbeat stops) or an exception is marked failed and its parameters are run again, so
the resumed study equals an uninterrupted one. Entrants added later get new studies in the same
storage under the same settings (checked).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from adamhd.lab.data import Corpus
from adamhd.lab.optimizers import REGISTRY
from adamhd.lab.train import RunConfig
from adamhd.lab.trial import run_trial

SETTINGS_KEY = "tune_settings"
CONFIG_STUDY = "settings"  # a study named PREFIX/settings holds the settings of the whole study


@dataclass(frozen=True)
class Scale:
    """One model size and its training budget."""

    name: str
    model: str
    steps: int
    batch_size: int = 16
    context: int = 128


# The CPU study (docs/results): `mini` (125k parameters) and `tiny` (842k), 8 evaluations a run.
SCALES = {
    "mini": Scale("mini", "mini", 200),
    "tiny": Scale("tiny", "tiny", 100),
    # the GPU preset's scales (`--preset gpu`): GPT-2-small width at sequence 1024
    "small": Scale("small", "small", 600, batch_size=16, context=1024),
    "gpt2-124m": Scale("gpt2-124m", "gpt2-124m", 600, batch_size=16, context=1024),
}

# lr and weight_decay: log-uniform for every entrant (lr times the entrant's lr_scale).
LR_RANGE = (3e-4, 3e-2)
WD_RANGE = (1e-3, 1.0)


@dataclass(frozen=True)
class Settings:
    """Everything that decides a study's numbers (stored with it; a resume must match)."""

    scales: tuple[Scale, ...]
    trials: int = 8
    tuning_seeds: tuple[int, ...] = (0,)
    fresh_seeds: tuple[int, ...] = (1, 2, 3)
    sampler: str = "qmc"  # qmc (scrambled Sobol) or tpe
    pruner: str = "asha"  # asha, hyperband or none
    evals: int = 8  # periodic evaluations per tuning trial (the pruner's rungs)
    final_evals: int = 10  # periodic evaluations per scored re-run (the speedup's resolution)
    eval_windows: int = 64  # windows of each periodic evaluation (a fixed subset)
    objective_windows: int = 256  # windows of a trial's final loss, the tuning objective
    final_windows: int = 512  # windows of a re-run's final loss, the scored number
    data: str = "shakespeare"
    tokenizer: str = "byte"
    bpe_vocab: int = 2048
    device: str = "cpu"
    dtype: str = "float32"
    compile: bool = False
    prefix: str = "cpu"
    corpus_key: str = ""

    def __post_init__(self):
        _check_settings(self)

    def fingerprint(self) -> dict:
        d = asdict(self)
        d.pop("compile")  # compiling changes no number
        d["scales"] = {s["name"]: s for s in d["scales"]}
        return d


def _check_settings(s: Settings) -> None:
    if not s.scales:
        raise ValueError("--scales: name at least one scale")
    if s.trials < 1:
        raise ValueError(f"--trials must be >= 1, got {s.trials}")
    if len(s.fresh_seeds) < 3:
        raise ValueError(f"--fresh-seeds: at least 3 seeds are needed for the intervals, got "
                         f"{len(s.fresh_seeds)}")
    if not s.tuning_seeds:
        raise ValueError("--tuning-seeds: give at least one seed")
    both = sorted(set(s.tuning_seeds) & set(s.fresh_seeds))
    if both:
        raise ValueError(f"tuning and fresh seeds must be disjoint (no winner's curse); both "
                         f"hold {both}")
    if len(set(s.fresh_seeds)) != len(s.fresh_seeds):
        raise ValueError("--fresh-seeds lists a seed twice")
    if s.sampler not in ("qmc", "tpe"):
        raise ValueError(f"unknown --sampler {s.sampler!r}; choose qmc or tpe")
    if s.pruner not in ("asha", "hyperband", "none"):
        raise ValueError(f"unknown --pruner {s.pruner!r}; choose asha, hyperband or none")
    for sc in s.scales:
        if sc.steps < s.evals or sc.steps < s.final_evals:
            raise ValueError(f"scale {sc.name}: {sc.steps} steps are fewer than the "
                             f"{max(s.evals, s.final_evals)} evaluations of a run")
    if not s.prefix or "/" in s.prefix:
        raise ValueError(f"--study must be a non-empty name without '/', got {s.prefix!r}")


# ----------------------------------------------------------------------------------------------
# The search space


@dataclass(frozen=True)
class Dim:
    low: float
    high: float
    log: bool = True


def space_of(entrant: str) -> dict[str, Dim]:
    """lr (scaled by the entrant's lr_scale) and weight_decay, log-uniform, updated by the
    entrant's own declaration (`tune=`: a key hyperparameter, or weight_decay None for one that
    ignores it)."""
    e = REGISTRY[entrant]
    space = {"lr": Dim(LR_RANGE[0] * e.lr_scale, LR_RANGE[1] * e.lr_scale),
             "weight_decay": Dim(*WD_RANGE)}
    for key, dim in e.tune:
        if dim is None:
            space.pop(key, None)
        else:
            space[key] = Dim(*dim)
    return space


def distributions(entrant: str) -> dict:
    from optuna.distributions import FloatDistribution

    return {k: FloatDistribution(d.low, d.high, log=d.log) for k, d in space_of(entrant).items()}


def run_config(settings: Settings, scale: Scale, entrant: str, params: dict, seed: int,
               evals: int) -> RunConfig:
    """The RunConfig of one trial or re-run: the sampled lr / weight_decay, the other sampled
    keys as the entrant's overrides."""
    extra = {k: v for k, v in params.items() if k not in ("lr", "weight_decay")}
    spec = entrant + (":" + ",".join(f"{k}={v!r}" for k, v in sorted(extra.items()))
                      if extra else "")
    return RunConfig(
        optimizer=spec, seed=seed, steps=scale.steps, model=scale.model,
        batch_size=scale.batch_size, context=scale.context, lr=params["lr"],
        weight_decay=params.get("weight_decay", 0.0), eval_every=max(1, scale.steps // evals),
        eval_windows=settings.eval_windows, device=settings.device, dtype=settings.dtype,
        compile=settings.compile, corpus_key=settings.corpus_key, prune=False, domains=False,
        choice_items=0)


# ----------------------------------------------------------------------------------------------
# Storage and studies


def storage_url(text: str) -> str:
    """A database URL as given, or a file path -> sqlite:///ABSOLUTE_PATH."""
    if "://" in text:
        return text
    return "sqlite:///" + str(Path(text).expanduser().resolve())


def open_storage(url: str, heartbeat: int = 60, attempts: int = 5):
    """Optuna's RDBStorage; tolerant of another process creating the same new database at the
    same moment (the losing side of that race gets a constraint error: it retries, and then finds
    the schema made)."""
    import optuna
    from sqlalchemy.exc import ArgumentError, DatabaseError, IntegrityError, OperationalError

    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna: on purpose
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=kwargs,
                    heartbeat_interval=heartbeat, grace_period=3 * heartbeat)
        except (IntegrityError, OperationalError) as exc:
            if attempt == attempts - 1:
                raise ValueError(f"--storage {url}: {_first_line(exc)}") from exc
            time.sleep(0.2 * (attempt + 1))
        except (ArgumentError, DatabaseError) as exc:  # not a URL we can open, not a database
            raise ValueError(f"--storage {url}: {_first_line(exc)}") from exc
    raise AssertionError("unreachable")


def _first_line(exc: Exception) -> str:
    """The first line of a database error (SQLAlchemy appends the SQL and a web link)."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def study_name(settings: Settings, scale: str, entrant: str) -> str:
    return f"{settings.prefix}/{scale}/{entrant}"


def _seed_of(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)


def _sampler(settings: Settings, name: str):
    import optuna

    seed = _seed_of(name)
    if settings.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, settings.trials // 2))
    return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed,
                                      warn_independent_sampling=False,
                                      warn_asynchronous_seeding=False)


class CountedTrialsPruner:
    """An Optuna pruner that sees only the trials that count: a failed trial (interrupted, to be
    run again; or surplus) leaves no rung values behind, so a resumed study prunes as an
    uninterrupted one."""

    def __new__(cls, base):
        import optuna

        class _Pruner(optuna.pruners.BasePruner):
            def prune(self, study, trial):
                return base.prune(_CountedView(study), trial)

        return _Pruner()


class _CountedView:
    def __init__(self, study):
        self._study = study

    def get_trials(self, deepcopy=True, states=None):
        from optuna.trial import TrialState

        keep = states or (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        keep = [s for s in keep if s != TrialState.FAIL]
        return self._study.get_trials(deepcopy=deepcopy, states=tuple(keep))

    def __getattr__(self, name):
        return getattr(self._study, name)


def _pruner(settings: Settings, scale: Scale):
    import optuna

    first = max(1, scale.steps // settings.evals)
    if settings.pruner == "none":
        return optuna.pruners.NopPruner()
    if settings.pruner == "hyperband":
        base = optuna.pruners.HyperbandPruner(min_resource=first, max_resource=scale.steps,
                                              reduction_factor=3)
        return base  # Hyperband keeps its own brackets by trial number; used as it is
    # one rung, at half the run: a trial goes on only if it is in the best third of those that
    # reached half-way (the best, while fewer than 3 have); an earlier rung would favour settings
    # that start fast over those that end best
    half = first * (settings.evals // 2)
    base = optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, half), reduction_factor=3)
    return CountedTrialsPruner(base)


def load_study(settings: Settings, storage, scale: Scale, entrant: str, *, create: bool):
    import optuna

    name = study_name(settings, scale.name, entrant)
    kw = dict(study_name=name, storage=storage, sampler=_sampler(settings, name),
              pruner=_pruner(settings, scale))
    if create:
        return optuna.create_study(direction="minimize", load_if_exists=True, **kw)
    return optuna.load_study(**kw)


def check_stored_settings(settings: Settings, url: str) -> bool:
    """Refuse a storage whose study was made with other settings. True if it exists already.

    Reads only: nothing is created when the storage does not exist yet."""
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        return False
    import optuna

    storage = open_storage(url)
    names = set(optuna.get_all_study_names(storage))
    config = f"{settings.prefix}/{CONFIG_STUDY}"
    if config not in names:
        return False
    saved = optuna.load_study(study_name=config, storage=storage).user_attrs.get(SETTINGS_KEY)
    diff = _diff(saved or {}, json.loads(json.dumps(settings.fingerprint())))  # as stored
    if diff:
        raise ValueError(f"the study {settings.prefix!r} in {url} was made with other settings "
                         f"({diff}); resume with the same options, or name another --study")
    return True


def _diff(saved: dict, now: dict) -> str:
    out = []
    for k in sorted(set(saved) | set(now)):
        a, b = saved.get(k), now.get(k)
        if k == "scales" and isinstance(a, dict) and isinstance(b, dict):
            # a scale that is not in this command is fine; one that is must match
            bad = [n for n in b if n in a and a[n] != b[n]]
            if bad:
                out.append(f"scales {bad}: saved {[a[n] for n in bad]} vs now "
                           f"{[b[n] for n in bad]}")
        elif a != b:
            out.append(f"{k}: saved {a!r} vs now {b!r}")
    return "; ".join(out)


def save_settings(settings: Settings, storage) -> None:
    import optuna

    study = optuna.create_study(study_name=f"{settings.prefix}/{CONFIG_STUDY}", storage=storage,
                                load_if_exists=True)
    saved = study.user_attrs.get(SETTINGS_KEY)
    now = settings.fingerprint()
    if saved is not None:
        now["scales"] = {**saved["scales"], **now["scales"]}  # scales accumulate
    study.set_user_attr(SETTINGS_KEY, now)


# ----------------------------------------------------------------------------------------------
# Running one study: tuning trials, then the re-runs on fresh seeds


@dataclass
class Cell:
    scale: Scale
    entrant: str


def counted(study) -> list:
    """The trials that count, in order: finished (complete or pruned) or running."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                    TrialState.RUNNING))


def _requeue_failed(study) -> None:
    """A failed trial that is not surplus (an interrupted run) is run again with the same
    parameters, once."""
    import optuna
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _dead_here(t.user_attrs.get("worker", "")):
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    retried = {t.user_attrs.get("retry_of") for t in study.get_trials(deepcopy=False)}
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.user_attrs.get("surplus") or t.number in retried:
            continue
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)


def _dead_here(worker: str) -> bool:
    """True if `worker` (host:pid) is a process of this host that no longer runs."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return int(pid) == os.getpid()  # this process asks: the trial's run is gone


class _Heartbeat:
    """Records a trial's heartbeat every `interval` seconds from a thread while it runs."""

    def __init__(self, storage, trial_id: int, interval: int):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            self.storage.record_heartbeat(self.trial_id)

    def __enter__(self):
        self.storage.record_heartbeat(self.trial_id)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def tune_study(settings: Settings, storage, cell: Cell, corpus: Corpus, *,
               interrupt_after: int | None = None, max_trials: int | None = None,
               log=None) -> None:
    """Run the missing tuning trials of one study, then its missing re-runs.

    For the tests: `interrupt_after` raises `Interrupted` in the first trial once it reports that
    step (a kill in the middle of a trial); `max_trials` stops after that many new trials (a kill
    between trials)."""
    study = load_study(settings, storage, cell.scale, cell.entrant, create=True)
    study.set_user_attr("space", {k: asdict(d) for k, d in space_of(cell.entrant).items()})
    _requeue_failed(study)
    ran = 0
    while len(counted(study)) < settings.trials:
        if max_trials is not None and ran >= max_trials:
            return
        _one_trial(settings, storage, study, cell, corpus, interrupt_after, log)
        ran += 1
    rerun_best(settings, storage, study, cell, corpus, log)


class Interrupted(Exception):
    """Raised by the tests' `interrupt_after` to stand for a kill in the middle of a trial."""


def _one_trial(settings, storage, study, cell, corpus, interrupt_after, log) -> None:
    import optuna
    from optuna.trial import TrialState

    trial = study.ask(distributions(cell.entrant))
    rank = sum(1 for t in counted(study) if t.number < trial.number)
    if rank >= settings.trials:  # another worker filled the budget meanwhile
        trial.set_user_attr("surplus", True)
        study.tell(trial, state=TrialState.FAIL)
        return
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    seed = settings.tuning_seeds[rank % len(settings.tuning_seeds)]
    cfg = run_config(settings, cell.scale, cell.entrant, trial.params, seed, settings.evals)
    last = [0]

    def report(step: int, value: float) -> None:
        trial.report(value, step)
        last[0] = step
        if interrupt_after is not None and step >= interrupt_after:
            raise Interrupted(f"interrupted at step {step}")
        if trial.should_prune():
            raise optuna.TrialPruned()

    t0 = (time.time(), time.process_time())
    try:
        with _Heartbeat(storage, trial._trial_id, storage.heartbeat_interval):
            res = run_trial(cfg, corpus, final_windows=settings.objective_windows, report=report)
    except optuna.TrialPruned:
        trial.set_user_attr("pruned_at", last[0])
        _set_common(trial, seed, t0)
        study.tell(trial, state=TrialState.PRUNED)
        _log(log, f"{study.study_name} trial {trial.number}: pruned ({_fmt(trial.params)})")
        return
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)  # run again on resume (_requeue_failed)
        raise
    _set_common(trial, seed, t0)
    for key in ("curve", "diverged", "ms_per_step", "state_bytes_per_param", "params", "tokens"):
        trial.set_user_attr(key, res[key])
    if res["diverged"]:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, res["final_val_loss"])
    _log(log, f"{study.study_name} trial {trial.number}: "
              f"{'diverged' if res['diverged'] else round(res['final_val_loss'], 4)} "
              f"({_fmt(trial.params)})")


def _set_common(trial, seed: int, t0: tuple[float, float]) -> None:
    trial.set_user_attr("seed", seed)
    trial.set_user_attr("wall_seconds", time.time() - t0[0])
    trial.set_user_attr("cpu_seconds", time.process_time() - t0[1])


def _fmt(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in sorted(params.items()))


def _log(log, text: str) -> None:
    if log is not None:
        print(text, file=log, flush=True)


def best_trial(study, trials: int):
    """The best complete trial among the first `trials` that count (None: none completed)."""
    from optuna.trial import TrialState

    first = counted(study)[:trials]
    done = [t for t in first if t.state == TrialState.COMPLETE]
    return min(done, key=lambda t: (t.value, t.number)) if done else None


def rerun_best(settings, storage, study, cell, corpus, log) -> None:
    """Re-run the best setting on each fresh seed not yet done (user attribute final:SEED)."""
    best = best_trial(study, settings.trials)
    if best is None:
        study.set_user_attr("best", None)
        return
    study.set_user_attr("best", {"number": best.number, "params": best.params,
                                 "value": best.value})
    for seed in settings.fresh_seeds:
        key = f"final:{seed}"
        done = study.user_attrs.get(key)
        if done is not None and done.get("setting") == best.params:
            continue
        cfg = run_config(settings, cell.scale, cell.entrant, best.params, seed,
                         settings.final_evals)
        res = run_trial(cfg, corpus, final_windows=settings.final_windows)
        study.set_user_attr(key, {**res, "setting": best.params, "seed": seed})
        _log(log, f"{study.study_name} re-run seed {seed}: {res['final_val_loss']}")


# ----------------------------------------------------------------------------------------------
# Many studies: in this process, in worker processes, on Ray, or one shard


@dataclass
class Plan:
    settings: Settings
    url: str
    entrants: list[str]
    heartbeat: int = 60
    cells: list[Cell] = field(default_factory=list)

    def __post_init__(self):
        # the small scale first (its results come first), and adamw first within a scale
        order = sorted(self.entrants, key=lambda e: (e != "adamw", self.entrants.index(e)))
        self.cells = [Cell(s, e) for s in self.settings.scales for e in order]


_WORKER: dict = {}


def _init_worker(corpus: Corpus, threads: int) -> None:
    import warnings

    import optuna
    import torch

    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage")
    _WORKER["corpus"] = corpus


def _work(plan: Plan, cell: Cell) -> str:
    """One study; an error in it is logged and kept with the study (the report names it), and
    the other studies go on: one broken entrant does not stop the whole study."""
    import traceback

    storage = open_storage(plan.url, plan.heartbeat)
    name = f"{cell.scale.name}/{cell.entrant}"
    try:
        tune_study(plan.settings, storage, cell, _WORKER["corpus"], log=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - reported, the study stays incomplete
        traceback.print_exc(file=sys.stderr)
        study = load_study(plan.settings, storage, cell.scale, cell.entrant, create=True)
        study.set_user_attr("error", f"{type(exc).__name__}: {exc}")
        return f"{name} (failed: {type(exc).__name__}: {exc})"
    return name


def run_plan(plan: Plan, corpus: Corpus, *, jobs: int = 1, threads: int = 1,
             use_ray: bool = False, shard: tuple[int, int] | None = None) -> None:
    cells = plan.cells if shard is None else plan.cells[shard[0]::shard[1]]
    save_settings(plan.settings, open_storage(plan.url, plan.heartbeat))
    if use_ray:
        return _run_ray(plan, cells, corpus, jobs, threads)
    if jobs <= 1:
        from adamhd.lab.train import torch_threads

        with torch_threads(threads):
            _init_worker(corpus, threads)
            for cell in cells:
                _work(plan, cell)
        return None
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(min(jobs, len(cells)), initializer=_init_worker,
                                      initargs=(corpus, threads)) as pool:
        pending = [pool.apply_async(_work, (plan, c)) for c in cells]
        for result in pending:
            print(f"done: {result.get()}", file=sys.stderr, flush=True)
    return None


def _run_ray(plan: Plan, cells: list[Cell], corpus: Corpus, jobs: int, threads: int) -> None:
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs the `ray` package: pip install 'ray[default]'") from None
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()  # the running cluster named there
        else:
            ray.init(num_cpus=max(jobs, threads), include_dashboard=False)  # a local instance

    @ray.remote(num_cpus=threads)
    def remote(cell: Cell, corpus_ref) -> str:
        _init_worker(corpus_ref, threads)
        return _work(plan, cell)

    ref = ray.put(corpus)
    for name in ray.get([remote.remote(c, ref) for c in cells]):
        print(f"done: {name}", file=sys.stderr, flush=True)


def make_scales(names: list[str], steps: list[int] | None, batch: int | None,
                context: int | None) -> tuple[Scale, ...]:
    """The named scales, with --steps (one per scale, or one for all), --batch-size and
    --context applied."""
    unknown = [n for n in names if n not in SCALES]
    if unknown:
        raise ValueError(f"unknown scale(s) {unknown}; choose from {', '.join(SCALES)}")
    if len(set(names)) != len(names):
        raise ValueError("--scales lists a scale twice")
    if steps is not None and len(steps) not in (1, len(names)):
        raise ValueError(f"--steps: give one value or one per scale ({len(names)})")
    out = []
    for i, name in enumerate(names):
        sc = SCALES[name]
        if steps is not None:
            sc = replace(sc, steps=steps[0] if len(steps) == 1 else steps[i])
        if batch is not None:
            sc = replace(sc, batch_size=batch)
        if context is not None:
            sc = replace(sc, context=context)
        out.append(sc)
    return tuple(out)


def dump(obj) -> str:
    return json.dumps(obj, indent=1, default=lambda o: None if isinstance(o, float) and
                      not math.isfinite(o) else str(o))
