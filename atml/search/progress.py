"""What a running search shows: a poll of the study's trials and the progress bar over it."""

from __future__ import annotations

import sys
from typing import Any

import optuna
from optuna.trial import TrialState

from atml import records
from atml.config import SearchSpace
from atml.search.worker import COUNTED

__all__ = ["poll", "Progress"]


def poll(study: optuna.Study, procs: list) -> dict[str, Any]:
    """One look at the study: trial counts by state, the best primary value, the live local
    workers of ``procs`` (``(Popen, log)`` pairs), the budget used and the trials skipped."""
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    best = None
    skipped = 0  # ended before training (size cap, avoid list): they do not use up the budget
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
        skipped += records.was_skipped(t) and t.state in COUNTED
        if t.state == TrialState.COMPLETE and t.values is not None:
            if best is None or sign * t.values[0] > sign * best:
                best = t.values[0]
    used = sum(counts.get(s.name, 0) for s in COUNTED) - skipped
    return {"counts": counts, "best": best, "alive": sum(p.poll() is None for p, _ in procs), "used": used,
            "skipped": skipped}


class Progress:
    """A tqdm bar on stderr over :func:`poll` states (nothing when disabled)."""

    def __init__(self, space: SearchSpace, enabled: bool) -> None:
        self.enabled = enabled
        self.total = space.budget.n_trials
        self.metric = space.study.metric
        self.bar = None
        if enabled:
            from tqdm import tqdm

            tty = sys.stderr.isatty()
            self.bar = tqdm(total=self.total, unit="trial", dynamic_ncols=True, file=sys.stderr,
                            desc=space.study.name, mininterval=0.5 if tty else 30.0)

    def update(self, state: dict[str, Any]) -> None:
        if self.bar is None:
            return
        c = state["counts"]
        # The bar counts what the budget counts: trials skipped before training are shown apart.
        done = state["used"]
        self.bar.n = done if self.total is None else min(done, self.total)
        best = "-" if state["best"] is None else f"{state['best']:.4f}"
        skipped = f" skipped={state['skipped']}" if state["skipped"] else ""
        self.bar.set_postfix_str(
            f"best {self.metric}={best} pruned={c.get('PRUNED', 0) - state['skipped']}{skipped} "
            f"failed={c.get('FAIL', 0)} workers={state['alive']}", refresh=False)
        self.bar.update(0)  # redraws at most every mininterval

    def note(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
