"""Caching: built once, reused without re-reading, atomic under races, keyed on content."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from atml.data import DataSpec, load_dataset, load_test_dataset


def _messages(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_second_load_uses_cache_without_parsing(txt_sample: Path, tmp_path: Path, caplog) -> None:
    spec = DataSpec(path=str(txt_sample))
    with caplog.at_level(logging.INFO, logger="atml.data"):
        first = load_dataset(spec, tmp_path)
        second = load_dataset(spec, tmp_path)
    assert len(_messages(caplog, "building data cache")) == 1
    assert len(_messages(caplog, "loaded data cache")) == 2
    np.testing.assert_array_equal(first.x, second.x)
    np.testing.assert_array_equal(first.y, second.y)
    assert isinstance(second.x, np.memmap) and not second.x.flags.writeable
    assert second.x.shape == (344, 1, 1250) and second.n_leads == 1 and second.n_samples == 1250
    assert second.subject.dtype.kind == "U" and second.classes == ("non-AFIB", "AFIB")
    assert second.source == str(txt_sample) and second.fs == 250
    assert int(second.y.sum()) == 90
    folders = [p.name for p in tmp_path.iterdir()]
    assert folders == [spec.cache_key()]  # no temporary folders left behind


def test_cache_key_ignores_split_fields_but_not_content(copy_sample, txt_sample: Path) -> None:
    folder = copy_sample(n=4)
    base = DataSpec(path=str(folder))
    same = DataSpec(
        path=str(folder), val_fraction=0.3, test_fraction=0.1, split_seed=9, test_path=str(txt_sample)
    )
    assert base.cache_key() == same.cache_key()
    assert base.cache_key() != DataSpec(path=str(folder), positive=("AFIB", "AB")).cache_key()
    assert base.cache_key() != DataSpec(path=str(folder), normalize="none").cache_key()
    before = base.cache_key()
    extra = sorted(p.name for p in txt_sample.iterdir())[-1]
    (folder / extra).write_bytes((txt_sample / extra).read_bytes())
    assert base.cache_key() != before  # folder listing is part of the key
    assert hash(base) == hash(DataSpec(path=str(folder)))
    assert hash(DataSpec(label_map={"AFIB": 1, "N": 0})) == hash(DataSpec(label_map={"N": 0, "AFIB": 1}))


def test_concurrent_builders_produce_one_complete_cache(tmp_path: Path) -> None:
    spec = DataSpec(synthetic_subjects=6, synthetic_per_subject=10)
    barrier = threading.Barrier(4)
    results: list = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            barrier.wait()
            results.append(load_dataset(spec, tmp_path))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [p.name for p in tmp_path.iterdir()] == [spec.cache_key()]
    for ds in results[1:]:
        np.testing.assert_array_equal(ds.x, results[0].x)


def test_labels_drop_map_and_cap(txt_sample: Path, session_cache: Path) -> None:
    dropped = load_dataset(DataSpec(path=str(txt_sample), drop_labels=("AB", "B")), session_cache)
    assert len(dropped.y) == 344 - 66 - 14 and int(dropped.y.sum()) == 90
    wider = load_dataset(DataSpec(path=str(txt_sample), positive=("AFIB", "SVTA")), session_cache)
    assert int(wider.y.sum()) == 92
    multi = DataSpec(
        path=str(txt_sample),
        classes=("N", "AFIB", "other"),
        label_map={"N": 0, "AFIB": 1, "SBR": 2, "AB": 2, "B": 2, "T": 2, "SVTA": 2},
    )
    ds = load_dataset(multi, session_cache)
    assert np.bincount(ds.y).tolist() == [120, 90, 134] and ds.classes == ("N", "AFIB", "other")
    capped = load_dataset(DataSpec(path=str(txt_sample), max_segments=100), session_cache)
    assert len(capped.y) == 100 and set(capped.subject.tolist()) == {"S1", "S19", "S36"}
    again = load_dataset(DataSpec(path=str(txt_sample), max_segments=100), session_cache)
    np.testing.assert_array_equal(capped.x, again.x)


def test_normalize_none_keeps_physical_values(txt_sample: Path, session_cache: Path) -> None:
    ds = load_dataset(DataSpec(path=str(txt_sample), normalize="none"), session_cache)
    assert float(np.abs(ds.x).max()) < 20.0  # millivolts, not z-scores
    z = load_dataset(DataSpec(path=str(txt_sample)), session_cache)
    np.testing.assert_allclose(np.asarray(z.x).std(axis=-1), 1.0, atol=1e-3)


def test_separate_test_set(copy_sample, txt_sample: Path, tmp_path: Path) -> None:
    test_folder = copy_sample(n=5)
    spec = DataSpec(path=str(txt_sample), test_path=str(test_folder))
    test = load_test_dataset(spec, tmp_path)
    assert test is not None and len(test.y) == 5 and test.source == str(test_folder)
    assert load_test_dataset(DataSpec(path=str(txt_sample)), tmp_path) is None


def test_synthetic_through_cache(tmp_path: Path) -> None:
    ds = load_dataset(DataSpec(), tmp_path)
    assert ds.x.shape == (960, 1, 1250) and ds.source == "synthetic(seed=0)"
    assert len(np.unique(ds.subject)) == 24
    split = ds.split(DataSpec(val_fraction=0.25, test_fraction=0.25))
    assert all(v["positives"] > 0 for v in split.summary().values())


@pytest.mark.parametrize("fmt", ["npz", "iesd_txt"])
def test_explicit_format_on_wrong_input_fails_clearly(
    txt_sample: Path, train_npz: Path, tmp_path: Path, fmt: str
) -> None:
    from atml.errors import DataError

    path = txt_sample if fmt == "npz" else train_npz
    with pytest.raises(DataError, match=str(path.name)):
        load_dataset(DataSpec(path=str(path), format=fmt), tmp_path)


def test_stale_build_folders_of_dead_processes_are_removed(txt_sample: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid that has just ended
    old = time.time() - 2 * 3600
    folders = {
        "stale": tmp_path / f".tmp-abc-{dead}-11111111",  # dead builder, nothing written for 2 h
        "recent": tmp_path / f".tmp-abd-{dead}-22222222",  # dead here, but written a minute ago
        "alive": tmp_path / f".tmp-abe-{os.getpid()}-33333333",  # this process: still building
    }
    for name, d in folders.items():
        d.mkdir()
        (d / "x.npy").write_bytes(b"\0" * 64)
        if name != "recent":
            for p in (d / "x.npy", d):
                os.utime(p, (old, old))
    load_dataset(DataSpec(path=str(txt_sample)), tmp_path)
    assert not folders["stale"].exists()
    assert folders["recent"].exists() and folders["alive"].exists()
