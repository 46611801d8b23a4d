"""The local worker processes of ``atml search``: start early, hand over, stop, clean up."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from atml import records
from atml.storage.optuna_internals import study_storage, trial_id

__all__ = ["LocalWorkers", "worker_envs", "wait_any", "stop_workers", "fail_orphans", "tail"]

log = logging.getLogger(__name__)


def worker_envs(gpus: tuple[int, ...], visible: str | None = None) -> list[dict[str, str]]:
    """The environment each local GPU worker adds to this process's: ``CUDA_VISIBLE_DEVICES``
    naming its one GPU (``gpus[i]``, an index among the GPUs this process sees).

    ``visible`` is this process's own ``CUDA_VISIBLE_DEVICES``: when set, index ``g`` means
    its ``g``-th entry (``visible="2,3"``: GPU 1 is ``3``), as torch counts them.
    """
    names = [v.strip() for v in visible.split(",")] if visible else None
    return [{"CUDA_VISIBLE_DEVICES": names[g] if names is not None else str(g)} for g in gpus]


class LocalWorkers:
    """Local worker processes, started before the space and data are checked.

    Each starts as ``atml worker --standby``: it imports torch and everything a trial
    needs while this process validates the space, checks the data and creates the
    study, then waits on stdin. :meth:`go` hands each its arguments and log file;
    :meth:`cancel` (a bad space or data, Ctrl-C during set-up) kills them before they
    have touched the storage or written a file.
    """

    def __init__(self, n: int, threads: int, envs: list[dict[str, str]] | None = None) -> None:
        """Start ``n`` standby workers; worker ``i`` adds ``envs[i]`` (its GPU) to the environment."""
        base = dict(os.environ)
        base.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        self._early: list[Any] = []
        for i in range(n):
            env = {**base, **(envs[i] if envs else {})}
            early = tempfile.TemporaryFile()  # output before go (an import error)
            # Own process group: Ctrl-C reaches the workers only through us, so we can
            # decide the order (stop them, then clean up) instead of racing them.
            p = subprocess.Popen([sys.executable, "-m", "atml", "worker", "--standby"], stdin=subprocess.PIPE,
                                 stdout=early, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self.procs.append((p, Path()))
            self._early.append(early)

    def go(self, argv: list[str], log_dir: Path) -> None:
        """Hand every worker ``argv`` (``worker ...``) and its log file ``log_dir/worker-<i>.log``."""
        for i, (p, _) in enumerate(self.procs):
            path = log_dir / f"worker-{i}.log"
            self.procs[i] = (p, path)
            early = self._early[i]
            early.seek(0)
            if head := early.read():
                path.write_bytes(head)
            early.close()
            try:
                p.stdin.write((json.dumps({"argv": argv, "log": str(path)}) + "\n").encode())
                p.stdin.close()
            except BrokenPipeError:  # it died while starting; its output is in its log
                pass

    def cancel(self) -> None:
        for (p, _), early in zip(self.procs, self._early, strict=True):
            p.kill()
            p.wait()
            early.close()


def wait_any(procs: list, seconds: float) -> None:
    """Sleep up to ``seconds``, waking as soon as every worker has exited."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(p.poll() is None for p, _ in procs):
        time.sleep(0.05)


def tail(path: Path, n: int = 3) -> str:
    """The last ``n`` lines of a worker log, joined by `` | `` (empty when unreadable)."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def stop_workers(procs: list, grace: float = 30.0) -> None:
    """SIGINT every live worker (each fails its trial and exits); kill those still alive after ``grace``."""
    for p, _ in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.time() + grace
    for p, _ in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def fail_orphans(study: optuna.Study, procs: list) -> None:
    """Mark RUNNING trials of our (now dead) workers FAIL so none stays RUNNING."""
    host = os.uname().nodename
    dead = {f"{host}:{p.pid}" for p, _ in procs if p.poll() is not None}
    storage = study_storage(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get(records.WORKER) in dead:
            try:
                storage.set_trial_user_attr(trial_id(t), records.REASON, "worker stopped before the trial ended")
                storage.set_trial_state_values(trial_id(t), TrialState.FAIL)
            except Exception:  # finished meanwhile: nothing to clean
                log.debug("trial %d finished while cleaning up", t.number)
