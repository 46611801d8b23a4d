"""What a storage holds: study names, and a one-line summary of every study."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["StudySummary", "study_names", "list_studies"]


@dataclass(frozen=True)
class StudySummary:
    """One study as ``atml studies`` lists it: trial counts by state, best value, stop reason."""

    name: str
    directions: tuple[str, ...]
    metric: str
    counts: dict[str, int]
    best_value: float | None
    best_trial: int | None
    stop_reason: str | None
    best_metrics: dict[str, float] = field(default_factory=dict)  # the best trial's metrics (CV: pooled, spread)


def study_names(storage: Any) -> list[str]:
    """Names of every study in ``storage``."""
    return [s.study_name for s in storage.get_all_studies()]


def list_studies(storage: Any) -> list[StudySummary]:
    """Trial counts by state and best value of every study in ``storage``."""
    import optuna

    from atml import records  # loads optuna: not at `import atml.storage`

    out = []
    for s in storage.get_all_studies():
        sid = storage.get_study_id_from_name(s.study_name)
        trials = storage.get_all_trials(sid, deepcopy=False)
        counts = {st.name: 0 for st in optuna.trial.TrialState}
        for t in trials:
            counts[t.state.name] += 1
        best_value = best_trial = None
        best_metrics: dict[str, float] = {}
        bt = records.best_trial(optuna.load_study(study_name=s.study_name, storage=storage), trials)
        if bt is not None:  # several objectives: the front's best in the first one
            best_value, best_trial = bt.values[0], bt.number
            best_metrics = dict(bt.user_attrs.get("metrics") or {})
        attrs = s.user_attrs
        space = records.stored_space(attrs) or {}
        raw_study = space.get("raw", {}).get("study", {})
        objectives = raw_study.get("objectives")
        metric = "+".join(o["metric"] for o in objectives) if objectives else raw_study.get("metric", "?")
        out.append(
            StudySummary(
                name=s.study_name,
                directions=tuple(d.name.lower() for d in s.directions),
                metric=metric,
                counts={k: v for k, v in counts.items() if v},
                best_value=best_value,
                best_trial=best_trial,
                stop_reason=records.stop_reason(attrs),
                best_metrics=best_metrics,
            )
        )
    return out
