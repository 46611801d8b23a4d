"""Readers and format detection on the real shared ECG data."""

from __future__ import annotations

import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from atml.data import NpzStream, detect_format, read_iesd_folder, read_npz
from atml.errors import DataError


def test_txt_reader_reads_every_real_segment(txt_sample: Path) -> None:
    raw = read_iesd_folder(txt_sample)
    assert raw.signal.shape == (344, 1250)
    assert raw.signal.dtype == np.float32
    assert sorted(set(raw.subjects.tolist())) == ["S1", "S19", "S36"]
    counts = Counter(raw.labels.tolist())
    assert counts["AFIB"] == 90 and counts["N"] == 120
    assert set(counts) == {"AB", "AFIB", "B", "N", "SBR", "SVTA", "T"}
    assert raw.skipped == 0
    # Values are physical (mV) as written: first line of S1-AB-20.txt is -0.0461431.
    i = raw.names.tolist().index("S1-AB-20.txt")
    assert raw.signal[i, 0] == pytest.approx(-0.0461431, abs=1e-7)
    assert raw.item_name(i) == str(txt_sample / "S1-AB-20.txt")


def test_unlabelled_file_name_becomes_unk(copy_sample, txt_sample: Path) -> None:
    folder = copy_sample(["S1-AB-20.txt"])
    (folder / "S7-300.txt").write_bytes((txt_sample / "S1-AB-21.txt").read_bytes())
    raw = read_iesd_folder(folder)
    assert dict(zip(raw.names.tolist(), raw.labels.tolist(), strict=True)) == {
        "S1-AB-20.txt": "AB",
        "S7-300.txt": "UNK",
    }
    assert raw.subjects.tolist() == ["S1", "S7"]


def test_detect_format(txt_sample: Path, train_npz: Path, tmp_path: Path) -> None:
    assert detect_format(txt_sample) == "iesd_txt"
    assert detect_format(train_npz) == "npz"
    assert detect_format(None) == "synthetic"
    other = tmp_path / "records"
    other.mkdir()
    (other / "A0001.hea").write_text("A0001 1 300 9000\n")
    with pytest.raises(DataError, match=r"cannot detect data format of .*records"):
        detect_format(other)
    with pytest.raises(DataError, match="does not exist"):
        detect_format(tmp_path / "missing")


def test_iesd_text_files_win_over_wfdb_files_in_detection(copy_sample) -> None:
    folder = copy_sample(n=3)
    (folder / "REFERENCE.csv").write_text("A0001,N\n")  # a CinC 2017 marker
    (folder / "A0001.hea").write_text("A0001 1 300 9000\n")
    assert detect_format(folder) == "iesd_txt"


def test_npz_stream_applies_gain(train_npz: Path) -> None:
    with NpzStream(train_npz) as stream:
        assert stream.shape == (50000, 1250)
        assert stream.gain == 10000.0
        assert len(set(stream.subjects.tolist())) == 53
        assert Counter(stream.labels.tolist())["AFIB"] == 22724
        start, first = next(stream.iter_chunks(rows=16))
    assert start == 0
    with np.load(train_npz) as data:
        expected = data["signal"][:16].astype(np.float32) / np.float32(10000.0)
    np.testing.assert_allclose(first, expected, rtol=1e-6)


def test_npz_dataset_through_cache(npz_dataset) -> None:
    ds = npz_dataset
    assert ds.x.shape == (50000, 1, 1250) and ds.x.dtype == np.float32
    assert isinstance(ds.x, np.memmap) and not ds.x.flags.writeable
    assert len(np.unique(ds.subject)) == 53
    assert int(ds.y.sum()) == 22724  # AFIB is the only positive label
    # zscore per segment and lead
    sample = np.asarray(ds.x[::5000, 0])
    np.testing.assert_allclose(sample.mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(sample.std(axis=1), 1, atol=1e-3)


def _save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_read_npz_small_float_file_and_bad_rows(tmp_path: Path) -> None:
    sig = np.random.default_rng(0).normal(size=(6, 1250)).astype(np.float32)
    labels = np.array(["AFIB", "N"] * 3)
    subject = np.array([1, 1, 2, 2, 3, 3], dtype=np.int16)
    ok = _save_npz(tmp_path / "ok.npz", signal=sig, label=labels, subject=subject, fs=np.int16(250))
    raw = read_npz(ok)
    np.testing.assert_array_equal(raw.signal, sig)
    assert raw.subjects.tolist() == ["S1", "S1", "S2", "S2", "S3", "S3"]

    sig[4, 10] = np.nan
    bad = _save_npz(tmp_path / "bad.npz", signal=sig, label=labels, subject=subject)
    with pytest.raises(DataError, match=r"bad\.npz\[row 4\]: non-finite"):
        read_npz(bad)
    skipped = read_npz(bad, on_bad="skip")
    assert skipped.skipped == 1 and len(skipped.signal) == 5


def test_npz_missing_keys_and_wrong_shape(tmp_path: Path) -> None:
    sig = np.zeros((2, 1250), np.int16)
    no_subject = _save_npz(tmp_path / "nosub.npz", signal=sig, label=np.array(["N", "N"]))
    with pytest.raises(DataError, match=r"nosub\.npz: missing key 'subject'"):
        read_npz(no_subject)
    short = _save_npz(
        tmp_path / "short.npz", signal=sig[:, :1000], label=np.array(["N", "N"]), subject=np.array([1, 2])
    )
    with pytest.raises(DataError, match=r"short\.npz: signal shape \(2, 1000\)"):
        read_npz(short)
    wrong_fs = _save_npz(
        tmp_path / "fs.npz",
        signal=sig,
        label=np.array(["N", "N"]),
        subject=np.array([1, 2]),
        fs=np.int16(500),
    )
    with pytest.raises(DataError, match=r"fs\.npz: fs is 500 Hz, expected 250"):
        read_npz(wrong_fs)
    not_zip = tmp_path / "junk.npz"
    not_zip.write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"junk\.npz: not a readable \.npz"):
        read_npz(not_zip)
    assert zipfile.is_zipfile(no_subject)


def test_npz_bad_rows_through_cache(tmp_path: Path, caplog) -> None:
    from atml.data import DataSpec, load_dataset

    rng = np.random.default_rng(1)
    sig = rng.normal(size=(9, 2, 1250)).astype(np.float32)  # two leads
    sig[2, 1, 7] = np.inf
    sig[6, 0, 0] = np.nan
    labels = np.array(["AFIB", "N", "N"] * 3)
    path = _save_npz(tmp_path / "leads.npz", signal=sig, label=labels, subject=np.repeat([4, 5, 6], 3))
    with pytest.raises(DataError, match=r"leads\.npz\[row 2\]: non-finite value \(2 rows affected\)"):
        load_dataset(DataSpec(path=str(path)), tmp_path / "cache")
    ds = load_dataset(DataSpec(path=str(path), on_bad="skip", normalize="none"), tmp_path / "cache")
    assert ds.x.shape == (7, 2, 1250) and ds.skipped == 2 and ds.n_leads == 2
    keep = [0, 1, 3, 4, 5, 7, 8]
    np.testing.assert_array_equal(np.asarray(ds.x), sig[keep])
    assert ds.y.tolist() == [1, 0, 1, 0, 0, 0, 0]
    assert ds.subject.tolist() == ["S4", "S4", "S5", "S5", "S5", "S6", "S6"]
