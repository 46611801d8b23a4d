"""The threshold gate: rules, the avoid list, metric-named folders."""

from __future__ import annotations

from atml.gate.core import (  # noqa: F401
    AVOID_PREFIX,
    DEFAULT_RADIUS,
    GATE_PREFIX,
    STOP_ATTR,
    AvoidEntry,
    add_avoid,
    artifact_store,
    avoid_entries,
    clean_partial,
    clear_avoid,
    enforce_keep,
    evaluation_metrics_txt,
    file_folder,
    find_match,
    folder_name,
    gate_records,
    lo_hi,
    matches,
    param_radius,
    record_folder,
    stop_reason,
    sync_folders,
    write_text,
    write_yaml,
)

__all__ = ['AVOID_PREFIX', 'GATE_PREFIX', 'STOP_ATTR', 'DEFAULT_RADIUS', 'AvoidEntry', 'param_radius', 'matches', 'find_match', 'avoid_entries', 'add_avoid', 'clear_avoid', 'lo_hi', 'folder_name', 'evaluation_metrics_txt', 'file_folder', 'clean_partial', 'gate_records', 'record_folder', 'enforce_keep', 'stop_reason', 'write_yaml', 'write_text', 'artifact_store', 'sync_folders']
