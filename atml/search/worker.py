"""One worker process: load the study, then run trials until the global budget is spent.

The budget is global: before each trial the worker counts finished and running trials
of the whole study (all workers, all machines), and a trial that was created past the
budget by a race with another worker ends at once as FAIL with reason ``over budget``.
Optuna's heartbeat runs only inside ``study.optimize``, so the worker calls it one trial
at a time.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from atml import records
from atml.config import SearchSpace, space_from_stored
from atml.device import check_precision, describe, resolve_device
from atml.errors import DataError, StorageError
from atml.gate import AvoidEntry, add_avoid, clean_partial
from atml.search.strategy import make_pruner, make_sampler
from atml.storage import (
    Backoff,
    checkpoint_sqlite,
    is_transient,
    open_storage,
    retrying,
    study_names,
    worker_id,
)
from atml.storage.resilient import study_user_attrs, trial_counts
from atml.train import Interrupted, TrainConfig
from atml.trial import DataVariants, Objective, data_spec, prepare_data

__all__ = ["WorkerOptions", "StopFlag", "OverBudget", "run_worker", "load_study_space", "budget_left", "preload",
           "COUNTED"]

log = logging.getLogger(__name__)

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)  # states that use up n_trials (unless "skipped")


OVER_BUDGET = "over budget"  # how the reason on such a trial begins


class OverBudget(Exception):
    """A trial created after the global budget was already taken by other workers."""


class _NoTracebackForOverBudget(logging.Filter):
    """Two workers racing for the last slot is expected at the end of a search: Optuna's
    one-line "Trial N failed ... OverBudget(...)" warning says it; a traceback would read
    as a crash in the worker log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], OverBudget):
            record.exc_info = record.exc_text = None
        return True


logging.getLogger("optuna.study._optimize").addFilter(_NoTracebackForOverBudget())


@dataclass(frozen=True)
class WorkerOptions:
    storage: str
    study: str
    data_path: str | None = None
    artifacts: str = "studies"
    threads: int = 1
    heartbeat_interval: int = 10
    grace_period: int = 30
    max_retry: int = 2
    max_failures: int = 5  # consecutive failed trials before this worker gives up
    artifact_store: str | None = None  # path or s3://bucket; default <artifacts>/artifact-store
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps: where this worker's trials train


def load_study_space(storage: Any, name: str) -> SearchSpace:
    """The search space stored with study ``name``."""
    if name not in study_names(storage):
        known = ", ".join(study_names(storage)) or "none"
        raise StorageError(f"study {name!r} not found in storage (studies: {known})")
    sid = storage.get_study_id_from_name(name)
    attrs = storage.get_study_user_attrs(sid)
    stored = records.stored_space(attrs)
    if stored is None:
        raise StorageError(f"study {name!r} was not created by atml search (no stored search space)")
    return space_from_stored(stored, check_build=True)  # the worker builds the models anyway


def budget_left(study: optuna.Study, space: SearchSpace) -> tuple[bool, str | None]:
    """Whether another trial may start, and if not, why the study is over.

    Asked before every trial by every worker: it reads the two attributes it needs and
    counts trials in the database (no trial is loaded), so its cost does not grow with the
    number of workers or trials."""
    attrs = study_user_attrs(study, (records.STOP, records.DEADLINE))
    stopped = records.stop_reason(attrs)
    if stopped:
        return False, stopped
    deadline = records.deadline(attrs)
    if deadline is not None and time.time() >= deadline:
        return False, f"timeout reached ({space.budget.timeout:g} s)"
    n = space.budget.n_trials
    if n is not None:
        counts = trial_counts(study, (*COUNTED, TrialState.RUNNING), records.SKIPPED)
        skipped = sum(f for _, f in counts.values())
        done = sum(c - f for s, (c, f) in counts.items() if s in COUNTED)
        if done >= n:
            return False, f"n_trials reached ({n})"
        if skipped > 10 * n + 50:
            return False, f"avoid list covers the space: {skipped} sampled points skipped"
        if sum(c - f for c, f in counts.values()) >= n:
            return False, None  # the rest of the budget is running elsewhere
    return True, None


class StopFlag:
    """Set by SIGINT/SIGTERM: the running trial ends as failed and the worker stops (a second signal: now)."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            if self.event.is_set():  # second Ctrl-C: stop now
                raise KeyboardInterrupt
            log.warning("signal %d: finishing the current trial as failed and stopping", signum)
            self.event.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def __call__(self) -> bool:
        return self.event.is_set()


def preload() -> None:
    """Import what the first trial would otherwise import lazily (metrics, ONNX export,
    the optimiser's compile hooks), so that cost is paid while the worker waits to start."""
    import sklearn.metrics  # noqa: F401
    import torch
    import torch.onnx  # noqa: F401

    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])


def run_worker(opts: WorkerOptions, stop: StopFlag | None = None) -> int:
    """Run trials of ``opts.study`` until its budget is spent; returns trials run here.

    The trials train on ``opts.device``; the data is copied there once, for all of them."""
    import torch

    device = resolve_device(opts.device)  # a device that is not there: before the storage is touched
    device_label = describe(device)
    torch.set_num_threads(opts.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    if stop is None:
        stop = StopFlag()
        stop.install()
    storage = open_storage(
        opts.storage, heartbeat=True, heartbeat_interval=opts.heartbeat_interval,
        grace_period=opts.grace_period, max_retry=opts.max_retry,
    )
    space = load_study_space(storage, opts.study)
    check_precision(space.precisions, device)
    spec = data_spec(space.data, opts.data_path)
    if spec.path is not None and not Path(spec.path).exists():
        raise DataError(f"data path {spec.path} does not exist on this machine (pass --data)")
    cache = Path(opts.artifacts) / "cache"
    data = (DataVariants(space.data, opts.data_path, cache, device=device) if space.data_params
            else prepare_data(spec, cache, device))
    clean_partial(Path(opts.artifacts) / opts.study / "gate")
    epochs = int(space.train_fixed.get("epochs", TrainConfig.epochs))
    study = optuna.load_study(
        study_name=opts.study, storage=storage,
        sampler=make_sampler(space.study), pruner=make_pruner(space.study, epochs, folds=space.validation.steps),
    )
    objective = Objective(space, data, opts.artifacts, should_stop=stop, artifact_store=opts.artifact_store)

    def guarded(trial: optuna.Trial) -> float:
        records.set_attrs(trial, {records.WORKER: worker_id(), records.DEVICE: device_label})
        n = space.budget.n_trials
        if n is not None:
            # WAITING too: a retry of a dead worker's trial queued before this one will run.
            ahead = trial_counts(study, (*COUNTED, TrialState.RUNNING, TrialState.WAITING), records.SKIPPED,
                                 below=trial.number)
            if sum(c - f for c, f in ahead.values()) >= n:
                records.set_reason(trial, f"{OVER_BUDGET}: the last slot was taken by another worker")
                raise OverBudget(f"trial {trial.number} is past the budget of {n}")
        try:
            return objective(trial)
        except Interrupted:
            records.set_reason(trial, "interrupted: the worker was stopped")
            raise
        except (optuna.TrialPruned, OverBudget):
            raise
        except Exception as e:  # a crash (or out of memory) marks a bad region
            if isinstance(e, (StorageError, optuna.exceptions.UpdateFinishedTrialError)) or is_transient(e):
                raise  # the storage failed (or another worker failed this trial), not these parameters
            reason = f"crashed: {type(e).__name__}: {str(e)[:200]}"
            records.set_reason(trial, reason)
            if trial.params:
                add_avoid(study, AvoidEntry(trial.number, dict(trial.params), reason))
            raise

    ran = failures = 0
    finished: list[optuna.trial.FrozenTrial] = []
    if isinstance(data, DataVariants):
        log.info("worker joined study %s on %s (%d preprocessing variants searched)", opts.study, device_label,
                 len(space.data_variants()))
    else:
        log.info("worker joined study %s on %s (%d x %d samples, %d train / %d val segments)",
                 opts.study, device_label, data.n_leads, data.n_samples, len(data.y_train), len(data.y_val))
    try:
        outage = Backoff("worker loop")  # storage lost outside the objective: wait, not a trial failure
        while not stop():
            ok, reason = retrying(budget_left, study, space, what="budget check")
            if not ok:
                if reason is None:
                    # The rest of the budget is running on other workers. Stay: if one of them
                    # dies, its trial is failed here once its heartbeat is stale, and retried.
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        retrying(optuna.storages.fail_stale_trials, study, what="stale trial check")
                    stop.event.wait(min(0.5, opts.heartbeat_interval))
                    continue
                if not retrying(lambda: records.stop_reason(study.user_attrs), what="stop reason"):
                    retrying(study.set_user_attr, records.STOP, reason, what="stop reason")
                break
            finished.clear()
            broken = False
            try:
                study.optimize(guarded, n_trials=1, catch=(Exception,),
                               callbacks=[lambda _s, ft: finished.append(ft)])
            except StorageError:  # an outage longer than RETRY_WAIT: give up
                raise
            except Exception as e:
                if is_transient(e):  # stale check, ask or tell lost the database
                    outage.wait(e)
                    continue
                # e.g. another worker failed our trial while our heartbeats could not be written
                log.warning("trial ended outside its objective: %s: %s", type(e).__name__, e, exc_info=True)
                broken = True
            else:
                outage.reset()
            ran += 1
            ft = finished[-1] if finished else None
            if ft is not None and (records.reason(ft) or "").startswith(OVER_BUDGET):
                continue
            failures = failures + 1 if broken or (ft is not None and ft.state == TrialState.FAIL) else 0
            if failures >= opts.max_failures:
                log.error("%d trials in a row failed; this worker stops", failures)
                break
    finally:
        engine = getattr(storage, "engine", None)
        if engine is not None:  # close connections now: the process may end with os._exit
            engine.dispose()
        # A copy of the database file alone then holds this worker's trials (others may
        # still be writing: a short wait, the search's own checkpoint at its end does the rest).
        checkpoint_sqlite(opts.storage, timeout=1.0)
    return ran
