"""The YAML ``data`` section -> :class:`DataSpec`."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from atml.data.spec import DataSpec

__all__ = ["spec_from_section", "SECTION_DEFAULTS"]

# YAML key -> default; the section is flat except ``synthetic: {subjects, per_subject, seed}``.
SECTION_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(DataSpec)
                                    if not f.name.startswith("synthetic_")}


def spec_from_section(data: dict[str, Any], path: str | None = None) -> DataSpec:
    """The DataSpec of a space's ``data`` section; ``path`` (``--data``) overrides ``data.path``."""
    kwargs = {k: data[k] for k in SECTION_DEFAULTS if k in data and data[k] is not None}
    for k in ("positive", "classes", "drop_labels"):
        if k in kwargs:
            kwargs[k] = tuple(kwargs[k])
    syn = data.get("synthetic") or {}
    kwargs.update(synthetic_subjects=syn.get("subjects", 24), synthetic_per_subject=syn.get("per_subject", 40),
                  synthetic_seed=syn.get("seed", 0))
    if path is not None:
        kwargs["path"] = path
        if kwargs.get("format") == "synthetic":
            kwargs["format"] = "auto"
    return DataSpec(**kwargs)
