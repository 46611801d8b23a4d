"""Rules of the ``data`` section; its settings and defaults are :class:`atml.data.DataSpec`'s.

Preprocessing settings in ``SEARCHABLE_DATA`` may be searched. Each value is preprocessed
and cached once, so they take categorical choices or a stepped range (a finite set), at
most ``MAX_DATA_VARIANTS`` combinations in all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atml.config.schema import Param, combinations, encode_choices, field_defaults
from atml.config.validator import Validator, join
from atml.data import READERS, DataSpec

__all__ = ["MAX_DATA_VARIANTS", "SEARCHABLE_DATA", "data_formats", "data_section"]

SEARCHABLE_DATA = ("target_fs", "window", "stride", "leads", "bandpass", "normalize")
MAX_DATA_VARIANTS = 24
_SYNTHETIC = "synthetic_"  # DataSpec's synthetic_<key> fields are the YAML mapping synthetic: {<key>}

# YAML key -> the type the YAML gives (lists for DataSpec's tuples; leads takes a name or a list).
_TYPES: dict[str, type] = {
    "path": str, "format": str, "positive": list, "classes": list, "drop_labels": list,
    "label_map": dict, "segment_length": int, "fs": int, "normalize": str, "val_fraction": float,
    "test_fraction": float, "test_path": str, "split_seed": int, "on_bad": str, "max_segments": int,
    "synthetic": dict, "target_fs": int, "window": float, "stride": float, "pad_short": bool,
    "window_mixed": str, "rhythm_default": str, "leads": object, "bandpass": list,
    "multilabel": bool, "strict_labels": bool, "drop_empty": bool, "ptbxl_labels": str,
}


def data_formats() -> tuple[str, ...]:
    """Every ``data.format``: auto, synthetic and each registered reader (read when asked:
    the registry may grow after import)."""
    return ("auto", "synthetic", *READERS)


def _defaults() -> tuple[dict[str, Any], dict[str, int]]:
    """(section key -> default, synthetic key -> default), in DataSpec's field order."""
    section: dict[str, Any] = {}
    synthetic: dict[str, int] = {}
    for k, val in field_defaults(DataSpec).items():
        if k.startswith(_SYNTHETIC):
            synthetic[k.removeprefix(_SYNTHETIC)] = val
            section.setdefault("synthetic", None)
        else:
            section[k] = list(val) if isinstance(val, tuple) else val
    return section, synthetic


def data_section(v: Validator, d: Any, base_dir: Path | None, check_paths: bool = True,
                 build: bool = True) -> tuple[dict[str, Any], tuple[Param, ...]]:
    """The ``data`` section as (settings with defaults filled in, searched settings).

    ``build`` also checks that every combination of searched settings makes a valid
    :class:`DataSpec` (see :mod:`atml.config.build`).
    """
    defaults, syn_defaults = _defaults()
    v.keys("data", d, set(defaults))
    out: dict[str, Any] = {}
    params: list[Param] = []
    for k, default in defaults.items():
        typ = _TYPES[k]
        val = d.get(k, default)
        if k in SEARCHABLE_DATA and isinstance(val, dict):
            p = _data_param(v, k, val, typ)
            params.append(p)
            val = p.values()[0]  # stands for the setting in checks that need one value
            if val is not None and typ is not object:
                val = v.typed(f"data.{k}", val, typ)
        elif k not in SEARCHABLE_DATA and isinstance(val, dict) and "type" in val and typ is not dict:
            v.fail(f"data.{k}", f"cannot be searched (searchable: {', '.join(SEARCHABLE_DATA)})")
        elif val is not None and typ is not object:
            val = v.typed(f"data.{k}", val, typ)
        out[k] = val
    _paths(v, out, base_dir, check_paths)
    _scalars(v, out)
    syn = dict(syn_defaults)
    if out["synthetic"] is not None:
        v.keys("data.synthetic", out["synthetic"], set(syn_defaults))
        for k, val in out["synthetic"].items():
            syn[k] = v.typed(f"data.synthetic.{k}", val, int)
            if k != "seed" and syn[k] < 1:
                v.fail(f"data.synthetic.{k}", f"must be >= 1 (got {syn[k]})")
    out["synthetic"] = syn
    if len(out["classes"]) < (1 if out["multilabel"] else 2):
        v.fail("data.classes", f"needs at least two names (one with multilabel) (got {out['classes']!r})")
    combos = combinations(tuple(params))
    if len(combos) > MAX_DATA_VARIANTS:
        v.fail("data", f"{len(combos)} combinations of searched preprocessing settings "
                       f"({', '.join(p.name for p in params)}); at most {MAX_DATA_VARIANTS} "
                       "(each is preprocessed and cached)")
    if build:
        from atml.config.build import check_data

        check_data(v, out, combos)
    if out["label_map"] is not None:
        for lab, cls in out["label_map"].items():
            if not isinstance(cls, int) or isinstance(cls, bool) or not 0 <= cls < len(out["classes"]):
                v.fail(f"data.label_map.{lab}", f"must be a class index in [0, {len(out['classes'])}) (got {cls!r})")
    return out, tuple(params)


def _paths(v: Validator, out: dict[str, Any], base_dir: Path | None, check_paths: bool) -> None:
    for k in ("path", "test_path"):
        if out[k] is not None:
            p = Path(out[k]).expanduser()
            if not p.is_absolute() and base_dir is not None:
                p = base_dir / p
            if check_paths and not p.exists():
                v.fail(f"data.{k}", f"no such file or directory: {p}")
            out[k] = str(p.resolve()) if check_paths else str(p)


def _scalars(v: Validator, out: dict[str, Any]) -> None:
    for k in ("val_fraction", "test_fraction"):
        if not 0.0 <= out[k] < 1.0:
            v.fail(f"data.{k}", f"must be in [0, 1) (got {out[k]})")
    if out["val_fraction"] <= 0:
        v.fail("data.val_fraction", f"must be > 0: selection needs a validation split (got {out['val_fraction']})")
    if out["val_fraction"] + out["test_fraction"] >= 1.0:
        v.fail("data", "val_fraction + test_fraction must be < 1")
    formats = data_formats()
    if out["format"] not in formats:
        v.fail("data.format", f"must be one of {', '.join(formats)} (got {out['format']!r})")
    if out["normalize"] not in ("zscore", "none"):
        v.fail("data.normalize", f"must be zscore or none (got {out['normalize']!r})")
    if out["on_bad"] not in ("error", "skip"):
        v.fail("data.on_bad", f"must be error or skip (got {out['on_bad']!r})")
    for k in ("segment_length", "fs", "max_segments"):
        if out[k] is not None and out[k] < 1:
            v.fail(f"data.{k}", f"must be >= 1 (got {out[k]})")


def _data_param(v: Validator, k: str, spec: dict[str, Any], typ: type) -> Param:
    """A searched preprocessing setting: categorical, or a stepped int/float range."""
    where = f"data.{k}"
    if "type" not in spec:
        v.fail(where, "a mapping here is a searched setting and needs type: categorical (or int/float with step)")
    if spec["type"] == "categorical":
        v.keys(where, spec, {"type", "choices"}, required={"choices"})
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            v.fail(join(where, "choices"), f"must be a non-empty list (got {choices!r})")
        enc = encode_choices(choices)
        if enc is None:
            p = v.param(where, spec, object, where)
            assert isinstance(p, Param)
            return p
        if len(set(enc)) != len(enc):
            v.fail(join(where, "choices"), f"duplicate choices {choices!r}")
        return Param(where, "categorical", choices=enc, encoded=True)
    if k not in ("target_fs", "window", "stride"):
        v.fail(join(where, "type"), f"must be categorical for {k} (got {spec['type']!r})")
    p = v.param(where, spec, int if k == "target_fs" else float, where)
    assert isinstance(p, Param)
    if p.step is None:
        v.fail(where, "a searched data setting needs a step (each value is preprocessed and cached once), "
                      "or use categorical choices")
    return p

