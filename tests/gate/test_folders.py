"""Gate folders without training: atomic writes, ranking, the best ``keep``, sync."""

from __future__ import annotations

import json

import optuna
import optuna.artifacts as oa
import pytest

from atml import gate as g
from atml import records
from atml.errors import StorageError


def _file(gate_dir, study, trial, lo, hi, store=None):
    folder = g.file_folder(gate_dir, g.folder_name(hi, lo), trial, {
        "metrics.json": g.write_text(json.dumps({"trial": trial, "lo": lo})),
        "params.yaml": g.write_yaml({"trial": trial, "b": 1, "a": 2}),
    })
    rec = {"trial": trial, "folder": folder.name, "lo": lo, "hi": hi, "metrics": {"f1": hi}}
    if store is not None:
        rec["artifacts"] = {f.name: oa.upload_artifact(artifact_store=store, file_path=str(f), study_or_trial=study)
                            for f in sorted(folder.iterdir())}
    g.record_folder(study, rec)
    return folder


@pytest.fixture
def study():
    return optuna.create_study(storage=optuna.storages.InMemoryStorage())


def test_folders_ranked_clashes_suffixed_and_the_best_kept(study, tmp_path):
    gate_dir = tmp_path / "gate"
    a = _file(gate_dir, study, 0, 0.90, 0.95)
    b = _file(gate_dir, study, 1, 0.905, 0.951)  # the same folder name as trial 0
    c = _file(gate_dir, study, 2, 0.93, 0.94)
    assert (a.name, b.name, c.name) == ("95-90", "95-90-t1", "94-93")
    assert (b / "params.yaml").read_text() == "trial: 1\nb: 1\na: 2\n", "keys in order"
    assert [r["trial"] for r in g.gate_records(study.user_attrs)] == [2, 1, 0], "by lo, then hi"
    assert g.enforce_keep(study, gate_dir, 2) == ["95-90"]
    assert sorted(p.name for p in gate_dir.iterdir()) == ["94-93", "95-90-t1"]
    assert study.user_attrs[f"{records.GATE_PREFIX}0"] is None, "a removed record is a null attribute"
    assert [r["trial"] for r in g.gate_records(study.user_attrs)] == [2, 1]


def test_a_failed_writer_leaves_nothing(tmp_path):
    def boom(p):
        p.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        g.file_folder(tmp_path, "95-94", 0, {"metrics.json": g.write_text("{}"), "model.onnx": boom})
    assert list(tmp_path.iterdir()) == []


def test_sync_writes_missing_and_removes_stale_folders(study, tmp_path):
    store = g.artifact_store(tmp_path / "store")
    assert isinstance(store, oa.FileSystemArtifactStore)
    kept = _file(tmp_path / "here", study, 0, 0.90, 0.95, store)
    _file(tmp_path / "here", study, 1, 0.80, 0.85, store)
    g.enforce_keep(study, tmp_path / "here", 1)
    there = tmp_path / "there"
    (there / "11-10").mkdir(parents=True)  # a folder the study no longer records
    (there / ".tmp-sync-9-x").mkdir()  # not a metric name: left to clean_partial
    written, removed = g.sync_folders(study.user_attrs, store, there)
    assert (written, removed) == ([kept.name], ["11-10"])
    assert sorted(p.name for p in there.iterdir()) == [".tmp-sync-9-x", kept.name]
    for f in kept.iterdir():
        assert (there / kept.name / f.name).read_bytes() == f.read_bytes()
    assert g.sync_folders(study.user_attrs, store, there) == ([], []), "nothing left to do"
    assert g.clean_partial(there, older_than=0) == 1


def test_s3_store_needs_boto3(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 -> ImportError
    with pytest.raises(StorageError, match="needs boto3"):
        g.artifact_store("s3://bucket")
