"""The threshold gate: rules, the shared avoid list, metric-named folders.

ATML's semantics, made safe for many workers on many machines: :mod:`atml.gate.rules`
(lo/hi, folder names, stop rules), :mod:`atml.gate.avoid` (avoid-list entries and their
neighbourhoods), :mod:`atml.gate.folders` (atomic folders, the best ``keep`` kept, sync
from an artifact store). The list and the folder records live in the study storage
under the keys of :mod:`atml.records`.
"""

from __future__ import annotations

from atml.gate.avoid import (
    DEFAULT_RADIUS,
    AvoidEntry,
    add_avoid,
    avoid_entries,
    clear_avoid,
    find_match,
    matches,
    param_radius,
)
from atml.gate.folders import (
    artifact_store,
    clean_partial,
    enforce_keep,
    file_folder,
    gate_records,
    record_folder,
    sync_folders,
    write_text,
    write_yaml,
)
from atml.gate.rules import evaluation_metrics_txt, folder_name, lo_hi, stop_reason

__all__ = [
    "DEFAULT_RADIUS", "AvoidEntry", "param_radius", "matches", "find_match",
    "avoid_entries", "add_avoid", "clear_avoid",
    "lo_hi", "folder_name", "evaluation_metrics_txt", "stop_reason",
    "file_folder", "clean_partial", "gate_records", "record_folder", "enforce_keep",
    "artifact_store", "sync_folders", "write_yaml", "write_text",
]
