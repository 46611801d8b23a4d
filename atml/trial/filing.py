"""The gate's verdict on a trained trial: avoid list, a metric-named folder, or a study stop.

ATML's rules (:mod:`atml.gate`) applied to one trial: below ``avoid_below`` its point goes
on the shared avoid list; at or above ``pass`` it is filed into a folder named from its
metrics (only while it is among the best ``keep``) and uploaded to the artifact store, so
other machines can materialise the folder; the stop rules may end the study.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import optuna.artifacts
import torch

from atml import gate as g
from atml import records
from atml.config import SearchSpace
from atml.onnx.convert import export_onnx
from atml.trial import attributes
from atml.trial.checkpoint import CHECKPOINT_FILE
from atml.trial.data import PreparedData

__all__ = ["Trained", "apply_gate", "file_trial"]


@dataclass(frozen=True)
class Trained:
    """A trained trial as the gate sees it."""

    model: torch.nn.Module  # with the kept weights loaded
    metrics: dict[str, float]  # validation metrics of the kept epoch
    params: dict[str, Any]  # the sampled configuration
    checkpoint: Path
    data: PreparedData


def apply_gate(trial: optuna.Trial, space: SearchSpace, trained: Trained, artifacts: Path,
               artifact_store: str | None = None) -> None:
    """Apply the gate to ``trial``; records the verdict on the trial (and the study)."""
    gate, study = space.gate, trial.study
    metrics = trained.metrics
    lo, hi = g.lo_hi(metrics, gate.metrics)
    trial.set_user_attr(attributes.GATE, {"lo": lo, "hi": hi})
    gate_metrics = {k: metrics[k] for k in gate.metrics}
    if gate.avoid_below is not None and not lo >= gate.avoid_below:
        reason = f"lowest metric {lo:.4f} < avoid_below {gate.avoid_below:g}"
        g.add_avoid(study, g.AvoidEntry(trial.number, dict(trial.params), reason, gate_metrics))
        trial.set_user_attr(attributes.GATE_RESULT, "avoided")
    elif gate.pass_ is not None and lo >= gate.pass_:
        better = [r for r in g.gate_records(study.user_attrs) if (r["lo"], r["hi"]) >= (lo, hi)]
        if len(better) < gate.keep:
            file_trial(trial, space, trained, lo, hi, artifacts, artifact_store)
        else:
            trial.set_user_attr(attributes.GATE_RESULT, f"passed, not among the best {gate.keep}")
    finished = [(t.number, t.user_attrs[attributes.GATE]["lo"])
                for t in sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
                                key=lambda t: t.datetime_complete)
                if attributes.GATE in t.user_attrs]
    reason = g.stop_reason(gate, [*finished, (trial.number, lo)])
    if reason and not records.stop_reason(study.user_attrs):
        study.set_user_attr(records.STOP, reason)


def file_trial(trial: optuna.Trial, space: SearchSpace, trained: Trained, lo: float, hi: float,
               artifacts: Path, artifact_store: str | None = None) -> None:
    """File ``trial`` into ``<artifacts>/<study>/gate/<hi>-<lo>/``, upload it and record it on the study."""
    gate, study, name = space.gate, trial.study, space.study.name
    metrics, d = trained.metrics, trained.data
    gate_dir = artifacts / name / "gate"
    writers = {
        "model.onnx": lambda p: p.write_bytes(export_onnx(trained.model, d.n_leads, d.n_samples)),
        CHECKPOINT_FILE: lambda p: shutil.copyfile(trained.checkpoint, p),
        "evaluation_metrics.txt": g.write_text(g.evaluation_metrics_txt(metrics, gate.metrics, trial.number)),
        "metrics.json": g.write_text(json.dumps({"trial": trial.number, "split": "validation",
                                                 **{k: metrics[k] for k in metrics}}, indent=2)),
        "params.yaml": g.write_yaml({"trial": trial.number, "study": name,
                                     "params": dict(trial.params), "config": trained.params}),
    }
    folder = g.file_folder(gate_dir, g.folder_name(hi, lo), trial.number, writers)
    # Other machines materialise the folder from the artifact store (atml gate sync).
    store = g.artifact_store(artifact_store or artifacts / "artifact-store")
    ids = {f: optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(folder / f),
                                               study_or_trial=trial) for f in sorted(writers)}
    g.record_folder(study, {"trial": trial.number, "folder": folder.name, "lo": lo, "hi": hi,
                            "metrics": {k: metrics[k] for k in gate.metrics}, "files": sorted(writers),
                            "artifacts": ids})
    records.set_attrs(trial, {attributes.GATE_RESULT: f"filed {folder.name}", attributes.GATE_FOLDER: folder.name})
    g.enforce_keep(study, gate_dir, gate.keep)
