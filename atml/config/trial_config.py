"""One trial's configuration, as :meth:`SearchSpace.suggest` samples it."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from atml.config.training import TRAIN_KEYS, TrainConfig
from atml.errors import SpaceError

__all__ = ["TrialConfig"]


@dataclass(frozen=True)
class TrialConfig:
    """A sampled configuration. The mappings are not to be changed in place.

    ``data`` holds only the searched preprocessing settings (merge them into the space's
    section with :meth:`SearchSpace.data_section`); ``train`` carries the train section
    (study- and data-given settings such as seed, metric and task at their defaults).
    """

    data: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    family: str = ""
    hparams: dict[str, Any] = field(default_factory=dict)
    init: dict[str, Any] = field(default_factory=dict)  # model.init of a warm start ({}: none)

    def as_dict(self) -> dict[str, Any]:
        """The plain form stored in checkpoints and exports:
        ``{"data": {...}, "train": {...}, "model": {"family", "hparams"}}`` (a warm start adds
        ``model.init``)."""
        model: dict[str, Any] = {"family": self.family, "hparams": copy.deepcopy(self.hparams)}
        if self.init:
            model["init"] = copy.deepcopy(self.init)
        train = {k: getattr(self.train, k) for k in TRAIN_KEYS}
        if self.train.prune:  # train.prune: {amount, epochs, steps}
            train["prune"] = dict(self.train.prune)
        return {"data": copy.deepcopy(self.data), "train": train, "model": model}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialConfig:
        """Read back :meth:`as_dict` (e.g. a checkpoint's ``params``); missing train keys take defaults."""
        train = d.get("train") or {}
        unknown = sorted(set(train) - {*TRAIN_KEYS, "prune"})
        if unknown:
            raise SpaceError(f"trial configuration 'train': unknown settings {', '.join(unknown)}")
        model = d.get("model") or {}
        if not isinstance(model.get("family"), str):
            raise SpaceError(f"trial configuration 'model.family': expected a name, got {model.get('family')!r}")
        return cls(data=copy.deepcopy(dict(d.get("data") or {})), train=TrainConfig(**train),
                   family=model["family"], hparams=copy.deepcopy(dict(model.get("hparams") or {})),
                   init=copy.deepcopy(dict(model.get("init") or {})))
