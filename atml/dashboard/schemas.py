"""Pydantic models of the dashboard's JSON API (they make its OpenAPI schema)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "TrialStateName", "StudyPlot", "TrialPlot", "SortOrder", "Health", "StudyItem", "Budget", "WorkerSeen",
    "TrialRow", "TrialPage", "Summary", "TrialDetail", "GateFile", "GateFolder", "AvoidEntry", "Note",
    "NoteIn", "EnqueueIn", "EnqueueOut", "StopOut", "ClearOut", "Figure", "Problem",
]

Scalar = str | int | float | bool | None


class TrialStateName(StrEnum):
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAIL = "FAIL"
    WAITING = "WAITING"


class StudyPlot(StrEnum):
    history = "history"
    intermediate = "intermediate"
    parallel = "parallel"
    importance = "importance"
    pareto = "pareto"


class TrialPlot(StrEnum):
    curves = "curves"
    confusion = "confusion"


class SortOrder(StrEnum):
    asc = "asc"
    desc = "desc"


class Problem(BaseModel):
    detail: str


class Health(BaseModel):
    status: str = "ok"
    version: str
    read_only: bool
    storage: str = Field(description="storage URL with any password hidden (a storage given as an object without a URL: its class)")


class StudyItem(BaseModel):
    name: str
    directions: list[str]
    metric: str
    counts: dict[str, int] = Field(description="trials by state")
    n_trials: int
    budget: int | None = Field(None, description="n_trials budget of the search space")
    best_value: float | None
    last_activity: str | None = Field(None, description="ISO time of the latest trial start or end")
    stop_reason: str | None


class Budget(BaseModel):
    n_trials: int | None
    done: int = Field(description="COMPLETE + PRUNED, what the workers count against n_trials")
    fraction: float | None
    timeout: float | None
    seconds_left: float | None


class WorkerSeen(BaseModel):
    worker: str = Field(description="host:pid")
    device: str | None = Field(None, description="where its trials train: cpu, mps or cuda:N (GPU name)")
    running: list[int] = Field(description="numbers of the trials it runs now")
    heartbeat_age: float | None = Field(None, description="seconds since its latest heartbeat")
    last_seen: str | None


class TrialRow(BaseModel):
    number: int
    state: str
    value: float | None
    values: list[float | None] | None
    params: dict[str, Any]
    metrics: dict[str, float | None]
    datetime_start: str | None
    datetime_complete: str | None
    duration: float | None = Field(None, description="seconds")
    worker: str | None
    n_params: int | None
    onnx_kb: float | None
    epochs: int = Field(description="intermediate values reported")
    reason: str | None = Field(None, description="why pruned, failed, interrupted or over budget")


class TrialPage(BaseModel):
    total: int
    offset: int
    limit: int
    sort: str
    order: str
    states: list[str]
    items: list[TrialRow]


class Summary(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    version: str = Field(description="changes whenever a trial or a study attribute changes")
    changed: bool = Field(description="version differs from the `since` query parameter")
    directions: list[str]
    metric: str
    source: str | None
    sampler: str | None
    pruner: str | None
    n_trials: int | None
    timeout: float | None
    deadline: float | None
    stop_reason: str | None
    end_reason: str | None = Field(default=None, description="why the study ended (stop reason, n_trials or "
                                   "timeout reached); None while it has budget left or trials running")
    classes: list[str]
    atml: bool = Field(description="created by atml search (a search space is stored)")
    counts: dict[str, int]
    total: int
    budget: Budget
    best: TrialRow | None
    workers: list[WorkerSeen]
    last_activity: str | None
    n_gate: int
    n_avoid: int
    n_notes: int
    has_size: bool
    multi_objective: bool
    plots: list[StudyPlot]


class Note(BaseModel):
    id: str
    text: str
    trial: int | None
    time: str | None


class TrialDetail(TrialRow):
    study: str
    metric: str
    classes: list[str]
    distributions: dict[str, str] = Field(description="each parameter's search range, as text")
    folds: list[dict[str, Any]] = Field(default_factory=list, description="a cross-validated trial's folds")
    subjects: list[dict[str, Any]] = Field(default_factory=list, description="per-subject figures of its validation (or out-of-fold) predictions")
    intermediate_values: list[tuple[int, float | None]]
    history: list[dict[str, Any]]
    user_attrs: dict[str, Any]
    best_epoch: int | None
    confusion: dict[str, int] | None = Field(None, description="tn, fp, fn, tp on the validation split")
    checkpoint: str | None
    checkpoint_url: str | None
    avoided: bool
    gate_folders: list[str]
    notes: list[Note]


class GateFile(BaseModel):
    name: str
    url: str | None = Field(None, description="download link; null when the file is not in this artifact store")
    size: int | None


class GateFolder(BaseModel):
    key: str
    folder: str
    trial: int | None
    metrics: dict[str, float | None]
    files: list[GateFile]


class AvoidEntry(BaseModel):
    key: str
    trial: int | None
    params: dict[str, Any]
    reason: str | None
    metrics: dict[str, float | None]


class NoteIn(BaseModel):
    text: str = Field(min_length=1, max_length=4000)


class EnqueueIn(BaseModel):
    params: dict[str, Scalar] = Field(
        description="flat parameter names as stored in the study, e.g. {\"train.lr\": 0.001, \"model.family\": \"afnet\"}")
    note: str | None = Field(None, max_length=4000)


class EnqueueOut(BaseModel):
    study: str
    number: int | None = Field(None, description="number of the WAITING trial the next free worker runs")
    params: dict[str, Any]


class StopOut(BaseModel):
    study: str
    stop_reason: str


class ClearOut(BaseModel):
    study: str
    cleared: int


class Figure(BaseModel):
    """A plotly figure (``Plotly.react(el, fig.data, fig.layout)``)."""

    model_config = ConfigDict(extra="allow")

    data: list[dict[str, Any]]
    layout: dict[str, Any]
