"""A worker's training data: train/validation tensors prepared once, one set per preprocessing variant.

The tensors live on the worker's device for all of its trials: copied there once, when
prepared, never per trial or per batch. Subjects stay numpy arrays on the host.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atml.data import DataSpec, load_dataset, spec_from_section

__all__ = ["data_spec", "PreparedData", "prepare_data", "DataVariants"]

log = logging.getLogger(__name__)

data_spec = spec_from_section  # the name the worker, search and export use


@dataclass
class PreparedData:
    """Train/validation tensors held in memory by one worker for all of its trials."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    classes: tuple[str, ...]
    fs: int
    n_leads: int
    n_samples: int
    split_summary: dict[str, Any]
    source: str
    task: str = "binary"
    # Subject of each segment (cross-validation folds and per-subject figures).
    subject_train: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=str))
    subject_val: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=str))
    val_fraction: float = 0.2  # data.val_fraction: the default inner hold-out of a fold
    leads: tuple[str, ...] = ()  # lead names, when the format names them (WFDB); a warm start maps by them
    # pool(), built once: every cross-validated trial of a worker reads the same tensors
    _pooled: tuple[torch.Tensor, torch.Tensor, np.ndarray] | None = field(default=None, init=False, repr=False)

    @property
    def device(self) -> torch.device:
        """Where the tensors are (the worker's device)."""
        return self.x_train.device

    def to(self, device: str | torch.device) -> PreparedData:
        """This data with its tensors on ``device`` (itself when they are there already)."""
        dev = torch.device(device)
        if self.x_train.device == dev:
            return self
        return dataclasses.replace(self, x_train=self.x_train.to(dev), y_train=self.y_train.to(dev),
                                   x_val=self.x_val.to(dev), y_val=self.y_val.to(dev))

    def pool(self) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Every non-test segment (train then validation subjects) with its subject, for cross-validation."""
        if self._pooled is None:
            self._pooled = (torch.cat([self.x_train, self.x_val]), torch.cat([self.y_train, self.y_val]),
                           np.concatenate([self.subject_train, self.subject_val]))
        return self._pooled


def prepare_data(spec: DataSpec, cache_dir: str | Path, device: str | torch.device = "cpu") -> PreparedData:
    """Load (cached) arrays, split by subject, and copy train/val into tensors on ``device`` once."""
    ds = load_dataset(spec, cache_dir)
    split = ds.split(spec)
    # One gather per split; trials then index tensors in memory, never the files.
    x_tr = torch.from_numpy(np.ascontiguousarray(ds.x[np.sort(split.train)]))
    x_va = torch.from_numpy(np.ascontiguousarray(ds.x[np.sort(split.val)]))
    task = getattr(ds, "task", "binary")
    ytype = np.float32 if task == "multilabel" else np.int64
    y_tr = torch.from_numpy(np.asarray(ds.y[np.sort(split.train)], dtype=ytype))
    y_va = torch.from_numpy(np.asarray(ds.y[np.sort(split.val)], dtype=ytype))
    return PreparedData(
        x_train=x_tr, y_train=y_tr, x_val=x_va, y_val=y_va, classes=tuple(ds.classes), fs=ds.fs,
        n_leads=ds.n_leads, n_samples=ds.n_samples, split_summary=split.summary(), source=ds.source,
        task=task, subject_train=np.asarray(ds.subject[np.sort(split.train)]).astype(str),
        subject_val=np.asarray(ds.subject[np.sort(split.val)]).astype(str), val_fraction=spec.val_fraction,
        leads=tuple(str(n) for n in (getattr(ds, "leads", None) or ())),
    ).to(device)


class DataVariants:
    """A worker's prepared data for each preprocessing variant its trials ask for.

    A space that searches preprocessing settings (``data.window``, ``data.bandpass``, ...)
    gives each trial its own data; each variant is preprocessed and cached on disk once
    (``atml search`` builds them all before the workers start) and the ``keep`` most
    recently used stay in memory here (on ``device``).
    """

    def __init__(self, section: dict[str, Any], data_path: str | None, cache_dir: str | Path, keep: int = 2,
                 device: str | torch.device = "cpu") -> None:
        self.device = device
        self.section = section
        self.data_path = data_path
        self.cache_dir = Path(cache_dir)
        self.keep = max(1, keep)
        self._lru: OrderedDict[str, PreparedData] = OrderedDict()

    def get(self, overrides: dict[str, Any]) -> PreparedData:
        """The prepared data of the variant ``overrides`` (the trial's searched ``data`` settings)."""
        key = json.dumps(overrides, sort_keys=True)
        if key in self._lru:
            self._lru.move_to_end(key)
            return self._lru[key]
        while len(self._lru) >= self.keep:  # free before loading the next
            self._lru.popitem(last=False)
        data = prepare_data(data_spec({**self.section, **overrides}, self.data_path), self.cache_dir, self.device)
        if overrides:
            log.info("data variant %s: %d x %d samples, %d train / %d val segments", key, data.n_leads,
                     data.n_samples, len(data.y_train), len(data.y_val))
        self._lru[key] = data
        return data
