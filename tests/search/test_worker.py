"""The worker's study-side checks on a real SQLite study: the stored space, the global budget."""

from __future__ import annotations

import time

import optuna
import pytest
from _helpers import small_space
from optuna.trial import TrialState

from atml import records
from atml.config import space_from_dict
from atml.errors import StorageError
from atml.search.coordinator import create_or_resume
from atml.search.worker import budget_left, load_study_space
from atml.storage import open_storage


@pytest.fixture
def sqlite_study(tmp_path):
    """A study created as ``atml search`` creates it (space stored), in a SQLite file."""

    def make(raw: dict) -> tuple[optuna.Study, object]:
        space = space_from_dict(raw, source="w.yaml")
        url = f"sqlite:///{tmp_path}/w.db"
        create_or_resume(space, url)
        storage = open_storage(url)
        return optuna.load_study(study_name=space.study.name, storage=storage), space

    return make


def test_load_study_space_reads_back_the_stored_space(sqlite_study, tmp_path):
    study, space = sqlite_study(small_space("w", n_trials=3))
    storage = open_storage(f"sqlite:///{tmp_path}/w.db")
    again = load_study_space(storage, "w")
    assert again.raw == space.raw and again.source == "w.yaml"
    assert again.study == space.study and again.budget == space.budget
    assert [p.name for p in again.params] == [p.name for p in space.params]
    with pytest.raises(StorageError, match=r"study 'nope' not found in storage \(studies: w\)"):
        load_study_space(storage, "nope")
    optuna.create_study(study_name="plain", storage=storage)
    with pytest.raises(StorageError, match="'plain' was not created by atml search"):
        load_study_space(storage, "plain")


def _finish(study: optuna.Study, state: TrialState, skipped: bool = False) -> None:
    t = study.ask()
    if skipped:
        records.mark_skipped(t, "size limit: test")
    study.tell(t, 0.5 if state == TrialState.COMPLETE else None, state=state)


def test_budget_counts_trained_trials_of_every_worker(sqlite_study):
    study, space = sqlite_study(small_space("w", n_trials=2))
    assert budget_left(study, space) == (True, None)
    _finish(study, TrialState.COMPLETE)
    _finish(study, TrialState.PRUNED, skipped=True)  # ended before training: no budget used
    _finish(study, TrialState.FAIL)  # a crash uses none either
    assert budget_left(study, space) == (True, None)
    running = study.ask()  # the last slot, taken by another worker
    assert budget_left(study, space) == (False, None)  # nothing to start, but not over
    study.tell(running, state=TrialState.PRUNED)  # pruned after training: counts
    assert budget_left(study, space) == (False, "n_trials reached (2)")


def test_budget_stops_on_stop_reason_deadline_and_a_covered_space(sqlite_study):
    study, space = sqlite_study(small_space("w", n_trials=1))
    study.set_user_attr(records.STOP, "stopped from the dashboard")
    assert budget_left(study, space) == (False, "stopped from the dashboard")
    study.set_user_attr(records.STOP, None)
    study.set_user_attr(records.DEADLINE, time.time() - 1)
    timed = space_from_dict({**small_space("w", n_trials=1), "budget": {"n_trials": 1, "timeout": 60}})
    assert budget_left(study, timed) == (False, "timeout reached (60 s)")
    study.set_user_attr(records.DEADLINE, time.time() + 3600)
    assert budget_left(study, timed) == (True, None)
    for _ in range(10 * 1 + 50 + 1):  # every sampled point falls on the avoid list
        _finish(study, TrialState.PRUNED, skipped=True)
    assert budget_left(study, space) == (False, "avoid list covers the space: 61 sampled points skipped")
