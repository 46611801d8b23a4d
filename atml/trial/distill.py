"""Knowledge distillation (``train.distill``): the student also learns the teacher's soft targets.

The loss of a batch is ``(1 - alpha) * hard + alpha * T^2 * soft``: ``hard`` is the usual
loss against the labels and ``soft`` the KL divergence from ``softmax(teacher / T)`` to
``softmax(student / T)`` (multilabel: BCE against ``sigmoid(teacher / T)``); ``T^2`` keeps
the soft gradients on the scale of the hard ones whatever the temperature (Hinton et al.).

The teacher's logits are those of the batch the student sees: with ``train.augment`` or
``train.stretch`` the teacher runs on each augmented batch (one teacher forward per batch),
so the soft targets describe the signal the student was given; without augmentation they
are computed once per worker and data variant on the training tensors and looked up.
The teacher runs in eval mode, without gradients; a checkpoint with fold models (a
cross-validated trial) teaches with their mean logits, an ONNX teacher (an ensemble export
among them) runs in onnxruntime on the CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from atml.config import TrialConfig
from atml.config.distill_rules import WHERE, shape_text, teacher_meta
from atml.errors import SpaceError
from atml.models import model_from_checkpoint
from atml.trial.attributes import DISTILL
from atml.trial.data import PreparedData

__all__ = ["Teacher", "Distiller", "distill_loss", "load_teacher", "prepare", "record"]

log = logging.getLogger(__name__)

_TEACHERS: dict[str, Teacher] = {}  # per worker: a teacher is read once
_TARGETS: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}  # (teacher, id(x)) -> (x, logits)


def distill_loss(student: torch.Tensor, hard: torch.Tensor, teacher: torch.Tensor, alpha: float,
                 temperature: float, task: str = "binary") -> torch.Tensor:
    """``(1 - alpha) * hard + alpha * T^2 * soft`` for student and teacher logits (see the module
    docs); ``alpha`` 0 returns ``hard`` itself, so training is that of no distillation."""
    if alpha == 0:
        return hard
    t = float(temperature)
    s, q = student.float() / t, teacher.detach().float() / t
    if task == "multilabel":
        soft = nn.functional.binary_cross_entropy_with_logits(s, torch.sigmoid(q))
    else:
        soft = nn.functional.kl_div(torch.log_softmax(s, dim=1), torch.log_softmax(q, dim=1), log_target=True,
                                    reduction="batchmean")
    return (1 - alpha) * hard + alpha * t * t * soft


@dataclass
class Teacher:
    """A loaded teacher: ``logits(x)`` of a batch of network input (numpy-free, on x's device)."""

    path: str
    meta: dict[str, Any]
    models: list[nn.Module] = field(default_factory=list)  # .pt: one per fold (their logits averaged)
    session: Any = None  # .onnx: an onnxruntime session
    held_out: list[tuple[str, ...]] = field(default_factory=list)  # .pt of a CV trial: each fold model's held subjects

    def for_fold(self, held: tuple[str, ...]) -> Teacher | None:
        """The fold model that held out exactly ``held`` (a student's fold of the same split),
        as a teacher of its own; None when the teacher has no such fold."""
        key = tuple(sorted(map(str, held)))
        for model, h in zip(self.models, self.held_out, strict=False):
            if tuple(sorted(map(str, h))) == key:
                return Teacher(self.path, self.meta, models=[model])
        return None

    def logits(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """The teacher's logits of ``x`` (N, leads, samples), float32, where ``x`` is."""
        out = []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                xb = x[i : i + batch_size]
                if self.session is not None:
                    name = self.session.get_inputs()[0].name
                    y = self.session.run(None, {name: xb.detach().float().cpu().numpy().astype(np.float32)})[0]
                    out.append(torch.from_numpy(np.asarray(y, dtype=np.float32)).to(x.device))
                else:
                    xf = xb.float()
                    out.append(torch.stack([m.to(x.device)(xf).float() for m in self.models]).mean(0))
        return torch.cat(out) if out else torch.empty(0, len(self.meta["classes"]), device=x.device)


def load_teacher(path: str) -> Teacher:
    """The teacher at ``path`` (a checkpoint or an ONNX export), read once per process."""
    if path in _TEACHERS:
        return _TEACHERS[path]
    meta = teacher_meta(path)
    if meta["kind"] == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        teacher = Teacher(path, meta, session=ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"]))
    else:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        states = [f["state_dict"] for f in ck.get("folds") or ()] or [ck["state_dict"]]
        models = []
        with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the trial's RNG alone
            for sd in states:
                models.append(model_from_checkpoint(ck, sd))
        held = [tuple(f.get("held_subjects") or ()) for f in ck.get("folds") or ()]
        teacher = Teacher(path, meta, models=models, held_out=held)
    _TEACHERS[path] = teacher
    return teacher


@dataclass
class Distiller:
    """The hook :func:`atml.train.fit` calls per batch: ``(student logits, hard loss, batch, indices) -> loss``.

    ``table`` (teacher logits of the training rows, looked up by index) when the batches are
    not augmented; else the teacher runs on each batch.
    """

    teacher: Teacher
    alpha: float
    temperature: float
    task: str
    source: str
    table: torch.Tensor | None = None

    def __call__(self, out: torch.Tensor, hard: torch.Tensor, xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if self.alpha == 0:
            return hard
        t = self.table.index_select(0, idx.to(self.table.device)) if self.table is not None else \
            self.teacher.logits(xb)
        return distill_loss(out, hard, t.to(out.device), self.alpha, self.temperature, self.task)

    def for_fold(self, held: tuple[str, ...]) -> Distiller:
        """The hook for the cross-validation fold that holds out ``held``: a teacher trained by
        cross-validation on the same folds teaches with its model of that fold, which never
        saw those subjects; any other teacher teaches as it is (see :attr:`record`)."""
        fold = self.teacher.for_fold(held)
        if fold is None:
            if self.teacher.held_out:
                log.warning("train.distill: no fold of the teacher %s held out the subjects %s; the whole teacher "
                            "teaches this fold (it saw some of them)", self.source, ", ".join(map(str, held)))
            return self
        return Distiller(fold, self.alpha, self.temperature, self.task, self.source, None)

    @property
    def record(self) -> dict[str, Any]:
        m = self.teacher.meta
        return {"teacher": self.source, "path": self.teacher.path, "kind": m["kind"], "members": m["members"],
                "alpha": self.alpha, "temperature": self.temperature,
                "targets": "precomputed on the training segments" if self.table is not None else
                           "on each (augmented) batch",
                "cv_folds": "a cross-validation fold is taught by the teacher's fold model that held out the same "
                            "subjects, where it has one" if self.teacher.held_out else
                            "the whole teacher teaches every fold (it may have seen a fold's held-out subjects)"}


def prepare(config: TrialConfig, data: PreparedData, per_batch: bool = False) -> Distiller | None:
    """The trial's distillation hook (None without ``train.distill``); a SpaceError naming
    ``train.distill.teacher`` when the teacher does not take this data's input or classes.
    ``per_batch`` runs the teacher on every batch (the training rows are not ``data.x_train``'s,
    as in cross-validation)."""
    dist = config.train.distill
    if not dist:
        return None
    teacher = load_teacher(str(dist["teacher"]))
    m = teacher.meta
    if m["classes"] != list(data.classes) or m["task"] != data.task:
        raise SpaceError(f"{WHERE}: the teacher predicts {m['task']} classes {m['classes']}, the data has "
                         f"{data.task} classes {list(data.classes)}")
    if (m["leads"], m["samples"], m["fs"]) != (data.n_leads, data.n_samples, int(data.fs)):
        raise SpaceError(f"{WHERE}: the teacher takes {shape_text(m['leads'], m['samples'], m['fs'])}, the "
                         f"student's input is {shape_text(data.n_leads, data.n_samples, int(data.fs))}")
    cfg = config.train
    table = None
    if not per_batch and cfg.augment == 0 and cfg.stretch == 0 and float(dist["alpha"]) > 0:
        key = (teacher.path, id(data.x_train))
        if key not in _TARGETS or _TARGETS[key][0] is not data.x_train:
            _TARGETS[key] = (data.x_train, teacher.logits(data.x_train))
        table = _TARGETS[key][1]
    return Distiller(teacher, float(dist["alpha"]), float(dist["temperature"]), data.task, str(dist["source"]),
                     table)


def record(trial: Any, distiller: Distiller | None) -> dict[str, Any] | None:
    """Store the trial's distillation on it (its ``distill`` attribute); returns it (None: none)."""
    if distiller is None:
        return None
    trial.set_user_attr(DISTILL, distiller.record)
    return distiller.record
