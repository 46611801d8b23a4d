"""The one place that touches Optuna internals which have no public equivalent.

Optuna keeps the storage-level ids of studies and trials, its storage cache and its
heartbeat interface private. ATML needs them to address a trial in the storage directly
(failing an orphaned trial, recording a heartbeat, the dashboard's bulk reads) and to
wrap a storage the way Optuna does. Keeping every such access here means an Optuna
upgrade that renames one breaks this module only, and its tests say so.
"""

from __future__ import annotations

from collections.abc import Container

import optuna
from optuna.storages import BaseStorage

# Optuna tests ``isinstance(storage, BaseHeartbeat)`` before it starts a heartbeat thread
# or fails stale trials, and exports the class from a private module only.
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.study import Study

# What ``BaseStorage.get_all_studies`` returns; no public module exports the class.
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

__all__ = ["BaseHeartbeat", "FrozenStudy", "trial_id", "study_id", "study_storage", "cached", "rdb_models",
           "rdb_trials", "remember_user_attrs"]


def trial_id(t: FrozenTrial | optuna.Trial) -> int:
    """The storage's id of a trial (not its number within the study).

    Every ``BaseStorage`` trial method takes this id, but ``FrozenTrial`` exposes only
    ``number``; mapping the number back costs a storage query per trial
    (``get_trial_id_from_study_id_trial_number``)."""
    return t._trial_id


def remember_user_attrs(trial: optuna.Trial, attrs: dict) -> None:
    """Make a live trial's ``user_attrs`` show ``attrs``, written to its storage in one call.

    ``Trial.set_user_attr`` writes one attribute and updates the trial's private copy of
    itself (``_cached_frozen_trial``), which ``Trial.user_attrs`` reads; a write of several
    at once must update that copy the same way."""
    trial._cached_frozen_trial.user_attrs.update(attrs)


def study_id(s: Study | FrozenStudy) -> int:
    """The storage's id of a study (``Study`` or the ``FrozenStudy`` of ``get_all_studies``).

    Neither class exposes it; the public way is a query by name
    (``get_study_id_from_name``) per study."""
    return s._study_id


def study_storage(study: Study) -> BaseStorage:
    """The storage a ``Study`` reads and writes through.

    ``Study`` offers no accessor; writing to one of its trials by id (failing a trial
    whose worker died) needs the storage object itself, cache included."""
    return study._storage


def cached(backend: BaseStorage) -> BaseStorage:
    """``backend`` behind the cache Optuna puts in front of an RDB storage (others as they are).

    ``create_study``/``load_study`` add this cache only to an ``RDBStorage`` instance,
    and its class ``_CachedStorage`` is private; ``get_storage`` is the function Optuna
    itself builds it with ("only for internal usage")."""
    return optuna.storages.get_storage(backend)



def rdb_models():  # noqa: ANN201 - Optuna's private ORM module
    """Optuna's SQLAlchemy table models (``optuna.storages._rdb.models``).

    Private: Optuna has no public schema module, and the dashboard's read-only SQL for large
    studies must use the very tables, column types and enums Optuna writes. Imported on
    demand (it loads SQLAlchemy's ORM).
    """
    from optuna.storages._rdb import models

    return models


def rdb_trials(backend: BaseStorage, study_id: int, ids: list[int], states: Container[TrialState]) -> list[FrozenTrial]:
    """Trials of ``study_id`` in ``states`` with one of ``ids`` (or a higher id), read in full
    by the ``RDBStorage`` ``backend`` in one query.

    ``RDBStorage._get_trials`` is the query Optuna's own cache refreshes itself with; the
    public ``get_all_trials`` cannot be narrowed to a few ids, and ``get_trial`` is a
    query per trial."""
    return backend._get_trials(study_id, states=states, included_trial_ids=set(ids),
                               trial_id_greater_than=max(ids))
