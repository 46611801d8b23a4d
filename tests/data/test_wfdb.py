"""WFDB layouts on real ECG: CinC 2021 sample, CPSC 2021 sample, and PTB-XL / CinC 2017 /
generic-CSV folders built here from those real signals (none of them ship in shared data).

Expected values are computed independently of atml: headers read as text, signals through
``wfdb.rdrecord``, rhythm episodes through ``wfdb.rdann``.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import wfdb
from _wfdb_folders import PATIENTS, PTBXL_SUPER, SUPERCLASSES, build_cinc2017, build_ptbxl  # noqa: E402
from scipy.signal import resample_poly

from atml.data import (
    DataSpec,
    detect_format,
    load_dataset,
    read_cinc2017,
    read_cinc2020,
    read_ptbxl,
    read_wfdb_csv,
    read_wfdb_rhythm,
    subject_split,
)
from atml.data.readers.wfdb_io import read_header, read_signal
from atml.errors import DataError

# wfdb 4.3 calls pandas with inplace=True, which pandas 3 deprecates: noise, not our code.
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword")

CODES = ["426783006", "164934002", "427084000", "284470004", "59931005"]  # SR, TAb, STach, PAC, TInv


@pytest.fixture(scope="module")
def cinc(shared_data: Path) -> Path:
    return shared_data / "cinc2021_sample"


@pytest.fixture(scope="module")
def cpsc(shared_data: Path) -> Path:
    return shared_data / "cpsc2021_sample"


def _dx(header: Path) -> list[str]:
    """Dx codes straight from the header text."""
    for line in header.read_text().splitlines():
        if line.startswith("# Dx:"):
            return [c.strip() for c in line.split(":", 1)[1].split(",")]
    raise AssertionError(f"no Dx in {header}")


def _copy_records(src: Path, dst: Path, names: list[str]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        for ext in (".hea", ".mat"):
            shutil.copy(src / f"{n}{ext}", dst / f"{n}{ext}")
    return dst


# ------------------------------------------------------------------ low-level reading


def test_header_and_signal_match_wfdb(cinc: Path, cpsc: Path) -> None:
    for rec in (cinc / "HR06000", cinc / "E07500", cinc / "JS20000", cpsc / "data_101_8"):
        h = read_header(rec.with_suffix(".hea"))
        ref = wfdb.rdrecord(str(rec))
        assert (h.fs, h.sig_len, h.n_sig) == (ref.fs, ref.sig_len, ref.n_sig)
        assert list(h.lead_names) == ref.sig_name
        np.testing.assert_allclose(read_signal(h), ref.p_signal.T, rtol=1e-6, atol=1e-6)
    assert read_header(cinc / "HR06000.hea").comment("dx") == ",".join(_dx(cinc / "HR06000.hea"))


# ------------------------------------------------------------------ CinC 2020/2021


def test_cinc2021_multilabel_y_matches_header_codes(cinc: Path, tmp_path: Path) -> None:
    assert detect_format(cinc) == "cinc2020"
    spec = DataSpec(path=str(cinc), multilabel=True, classes=CODES)
    ds = load_dataset(spec, tmp_path)
    assert ds.task == "multilabel" and spec.task == "multilabel"
    assert ds.x.shape == (50, 12, 5000) and ds.fs == 500
    assert ds.y.shape == (50, len(CODES)) and ds.y.dtype == np.float32
    assert ds.leads == ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
    order = sorted(p.stem for p in cinc.glob("*.hea"))
    assert ds.subject.tolist() == order  # subject = record; records in name order
    for rec in ("HR06000", "JS20000"):
        codes = _dx(cinc / f"{rec}.hea")
        expected = [1.0 if c in codes else 0.0 for c in CODES]
        assert ds.y[order.index(rec)].tolist() == expected
    assert ds.y[order.index("HR06000")].tolist() == [1, 1, 0, 0, 0]  # 164934002,426783006
    # Subject-wise split of a multi-label set: no leak, every class in each part.
    split = ds.split(DataSpec(val_fraction=0.25, test_fraction=0.25))
    parts = [set(ds.subject[p].tolist()) for p in (split.train, split.val, split.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sum(len(p) for p in parts) == 50
    for idx in (split.train, split.val, split.test):
        assert (ds.y[idx].sum(axis=0) > 0).all()
    assert split.summary()["train"]["class_counts"] == ds.y[split.train].sum(axis=0).astype(int).tolist()


def test_cinc_leads_resample_bandpass_windows(cinc: Path, tmp_path: Path) -> None:
    spec = DataSpec(
        path=str(cinc), multilabel=True, classes=CODES, leads=["ii"], target_fs=250,
        window=4.0, stride=2.0, bandpass=[0.5, 40.0], normalize="none",
    )
    ds = load_dataset(spec, tmp_path)
    # 10 s at 250 Hz = 2500 samples -> windows of 1000 every 500: 4 per record
    assert ds.x.shape == (200, 1, 1000) and ds.fs == 250 and ds.leads == ("ii",)
    assert (ds.subject[:4] == ds.subject[0]).all() and len(set(ds.subject.tolist())) == 50
    np.testing.assert_array_equal(ds.y[0:4], np.repeat(ds.y[:1], 4, axis=0))
    assert np.abs(np.asarray(ds.x).mean(axis=-1)).max() < 0.1  # high-pass removed the offset
    # Lead order follows the request, values are the records' own (no filter, no resample).
    three = load_dataset(
        DataSpec(path=str(cinc), multilabel=True, classes=CODES, leads=["V1", "I", "II"], normalize="none"),
        tmp_path,
    )
    ref = wfdb.rdrecord(str(cinc / "E07500")).p_signal.T
    i = three.subject.tolist().index("E07500")
    np.testing.assert_allclose(three.x[i], ref[[6, 0, 1]], atol=1e-6)
    with pytest.raises(DataError, match=r"E07500: DataSpec\.bandpass high=300\.0 Hz must be below half"):
        load_dataset(DataSpec(path=str(cinc), multilabel=True, classes=CODES, bandpass=[0.5, 300.0],
                              on_bad="skip"), tmp_path)  # a spec problem: never skipped
    with pytest.raises(DataError, match=r"E07500: no lead 'V7' \(record has \['I', 'II'"):
        load_dataset(DataSpec(path=str(cinc), multilabel=True, classes=CODES, leads=["V7"]), tmp_path)


# ------------------------------------------------------------------ rhythm annotations


def _af_mask(rec: Path) -> np.ndarray:
    """Per-sample AF flag from wfdb.rdann rhythm notes (before the first note: not AF)."""
    ann = wfdb.rdann(str(rec), "atr")
    af = np.zeros(wfdb.rdheader(str(rec)).sig_len, dtype=bool)
    state, last = False, 0
    for s, note in zip(ann.sample, ann.aux_note, strict=True):
        if note.startswith("("):
            af[last:s] = state
            state, last = note == "(AFIB", int(s)
    af[last:] = state
    return af


def _starts(raw, record: str, fs: int) -> dict[int, str]:  # noqa: ANN001
    """Window start sample -> label for one record's windows (names are record@<seconds>s)."""
    return {
        int(round(float(n.split("@")[1].rstrip("s")) * fs)): lab
        for n, lab in zip(raw.names.tolist(), raw.labels.tolist(), strict=True)
        if n.startswith(f"{record}@")
    }


def test_rhythm_windows_follow_af_episodes(cpsc: Path) -> None:
    assert detect_format(cpsc) == "wfdb_rhythm"
    rec = cpsc / "data_101_8"  # AF 3650-14224 and 19094-23906 of 24244 samples at 200 Hz
    af = _af_mask(rec)
    windows = {s: af[s : s + 2000] for s in range(0, len(af) - 2000 + 1, 1000)}
    pure = {s: "AFIB" if w.all() else "N" for s, w in windows.items() if w.all() or not w.any()}
    straddling = set(windows) - set(pure)
    assert set(pure.values()) == {"AFIB", "N"} and len(straddling) >= 4  # every case occurs

    spec = DataSpec(path=str(cpsc), window=10.0, stride=5.0, normalize="none")
    raw = read_wfdb_rhythm(cpsc, spec=spec)
    assert _starts(raw, "data_101_8", 200) == pure  # inside AF: AFIB, outside: N, straddling dropped
    assert set(raw.subjects[np.char.startswith(raw.names, "data_101_8@")].tolist()) == {"P101"}
    signal = wfdb.rdrecord(str(rec)).p_signal.T
    i = raw.names.tolist().index("data_101_8@25s")
    np.testing.assert_allclose(raw.signal[i], signal[:, 5000:7000], atol=1e-6)

    majority = read_wfdb_rhythm(cpsc, spec=DataSpec(path=str(cpsc), window=10.0, stride=5.0,
                                                    window_mixed="majority"))
    expected = {s: "AFIB" if w.mean() > 0.5 else "N" for s, w in windows.items()}
    assert _starts(majority, "data_101_8", 200) == expected


def test_cpsc_binary_afib_through_cache(cpsc: Path, tmp_path: Path) -> None:
    ds = load_dataset(DataSpec(path=str(cpsc), window=10.0), tmp_path)
    assert ds.task == "binary" and ds.y.dtype == np.int64
    assert ds.x.shape[1:] == (2, 2000) and ds.fs == 200
    assert sorted(set(ds.subject.tolist())) == ["P101", "P21", "P35", "P8", "P84", "P92"]
    non_af = np.isin(ds.subject, ["P21", "P35"])  # "non atrial fibrillation" records only
    assert ds.y[non_af].sum() == 0 and ds.y[np.isin(ds.subject, ["P8", "P84"])].all()
    split = subject_split(ds.subject, ds.y, 0.34, 0.0, seed=0)
    assert not set(ds.subject[split.train].tolist()) & set(ds.subject[split.val].tolist())


# ------------------------------------------------------------------ CinC 2017 layout


@pytest.fixture(scope="module")
def cinc2017(cinc: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    return build_cinc2017(cinc, tmp_path_factory.mktemp("cinc2017"))


def test_cinc2017_folder_with_date_before_time(cinc2017, tmp_path: Path) -> None:
    folder, digital = cinc2017
    assert detect_format(folder) == "cinc2017"
    with pytest.raises(ValueError):  # the trap is real: wfdb's strict parser rejects it
        wfdb.rdheader(str(folder / "A00002"))
    assert "date before time" in read_header(folder / "A00002.hea").repaired
    spec = DataSpec(path=str(folder), classes=["N", "A", "O", "~"], window=5.0, stride=2.5, normalize="none")
    assert spec.task == "multiclass"
    ds = load_dataset(spec, tmp_path)
    # windows of 1500 samples every 750: 3000 -> 3, 2700 -> 2, 2100 -> 1, 2400 -> 2, 2850 -> 2
    counts = {s: int((ds.subject == s).sum()) for s in sorted(set(ds.subject.tolist()))}
    assert counts == {"A00001": 3, "A00002": 2, "A00003": 1, "A00004": 3, "A00005": 2, "A00006": 2}
    first = {s: int(ds.y[ds.subject == s][0]) for s in counts}
    assert first == {"A00001": 0, "A00002": 1, "A00003": 2, "A00004": 3, "A00005": 0, "A00006": 1}
    second = np.asarray(ds.x[ds.subject == "A00002"])[1, 0]
    np.testing.assert_allclose(second, digital["A00002"][750:2250] / 1000.0, atol=1e-6)
    with pytest.raises(DataError, match=r"records differ in length .*set data\.window"):
        read_cinc2017(folder, spec=DataSpec(path=str(folder), classes=["N", "A", "O", "~"]))
    padded = read_cinc2017(folder, spec=DataSpec(path=str(folder), window=9.0, pad_short=True,
                                                 classes=["N", "A", "O", "~"]))
    assert padded.signal.shape == (6, 1, 2700) and padded.leads == ("ECG",)


# ------------------------------------------------------------------ PTB-XL layout

@pytest.fixture(scope="module")
def ptbxl(cinc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_ptbxl(cinc, tmp_path_factory.mktemp("ptbxl"))


def test_ptbxl_superclasses_and_patients(ptbxl: Path, tmp_path: Path) -> None:
    assert detect_format(ptbxl) == "ptbxl"
    spec = DataSpec(path=str(ptbxl), multilabel=True, classes=SUPERCLASSES)
    ds = load_dataset(spec, tmp_path)
    assert ds.x.shape == (10, 12, 5000) and ds.fs == 500 and ds.leads[3] == "AVR"
    expected = np.array([[float(c in s) for c in SUPERCLASSES] for s in PTBXL_SUPER], dtype=np.float32)
    np.testing.assert_array_equal(ds.y, expected)
    assert ds.subject.tolist() == [f"P{p}" for p in PATIENTS]
    split = ds.split(DataSpec(val_fraction=0.3))
    assert not set(ds.subject[split.train].tolist()) & set(ds.subject[split.val].tolist())
    # drop_empty removes the record whose only code (SR) is not diagnostic; 100 Hz files
    # are read when the target rate allows it; leads match case-insensitively (aVR = AVR).
    lr = load_dataset(DataSpec(path=str(ptbxl), multilabel=True, classes=SUPERCLASSES, drop_empty=True,
                               target_fs=100, leads=["aVR", "V6"], normalize="none"), tmp_path)
    assert lr.x.shape == (9, 2, 1000) and lr.fs == 100
    ref = wfdb.rdrecord(str(ptbxl / "records100/00000/00001_lr")).p_signal.T
    np.testing.assert_allclose(lr.x[0], ref[[3, 11]], atol=1e-6)
    scp = read_ptbxl(ptbxl, spec=DataSpec(path=str(ptbxl), multilabel=True, classes=["NORM"], ptbxl_labels="scp"))
    assert scp.labels[0] == "NORM,SR" and scp.labels[5] == "SR"


# ------------------------------------------------------------------ generic CSV folder


def test_generic_csv_folder(cinc: Path, tmp_path: Path) -> None:
    folder = _copy_records(cinc, tmp_path / "generic" / "recs", ["HR06000", "E07500", "JS20000"]).parent
    (folder / "labels.csv").write_text(
        'record,label,subject\nrecs/HR06000,"NORM,X",p1\nrecs/E07500,MI,p2\nrecs/JS20000,NORM,p1\n'
    )
    assert detect_format(folder) == "wfdb_csv"
    raw = read_wfdb_csv(folder, spec=DataSpec(path=str(folder), multilabel=True, classes=["NORM", "MI"]))
    assert raw.labels.tolist() == ["NORM,X", "MI", "NORM"] and raw.subjects.tolist() == ["p1", "p2", "p1"]
    ds = load_dataset(DataSpec(path=str(folder), multilabel=True, classes=["NORM", "MI"]), tmp_path / "c")
    assert ds.y.tolist() == [[1, 0], [0, 1], [1, 0]]
    with pytest.raises(DataError, match=r"recs/HR06000: label\(s\) outside the mapping: \['X'\]"):
        load_dataset(DataSpec(path=str(folder), multilabel=True, classes=["NORM", "MI"], strict_labels=True),
                     tmp_path / "c")


# ------------------------------------------------------------------ bad records


def test_bad_records_error_or_skip(cinc: Path, tmp_path: Path) -> None:
    names = ["HR06000", "HR06001", "E07500", "JS20000"]
    folder = _copy_records(cinc, tmp_path / "bad", names)
    (folder / "HR06001.mat").unlink()
    hea = folder / "E07500.hea"
    hea.write_text(hea.read_text().replace("E07500 12 500 5000", "E07500 12 500 6000", 1))
    spec = DataSpec(path=str(folder), multilabel=True, classes=CODES)
    with pytest.raises(DataError, match=r"E07500\.hea: header says 6000 samples per signal, E07500\.mat holds 5000"):
        read_cinc2020(folder, spec=spec)
    (folder / "E07500.hea").unlink()
    (folder / "E07500.mat").unlink()
    with pytest.raises(DataError, match=r"HR06001\.hea: signal file HR06001\.mat not found"):
        load_dataset(spec, tmp_path / "c")
    ds = load_dataset(DataSpec(path=str(folder), multilabel=True, classes=CODES, on_bad="skip"), tmp_path / "c")
    assert len(ds.y) == 2 and ds.skipped == 1
    (folder / "HR06001.hea").unlink()
    # A code outside the classes: ignored by default, a named error when strict.
    strict = DataSpec(path=str(folder), multilabel=True, classes=CODES[:2], strict_labels=True)
    with pytest.raises(DataError, match=r"JS20000: label\(s\) outside the mapping: \['284470004'"):
        load_dataset(strict, tmp_path / "c")
    lenient = load_dataset(replace(strict, on_bad="skip"), tmp_path / "c")
    assert lenient.subject.tolist() == ["HR06000"] and lenient.skipped == 1
    # Single-label (multiclass) mapping of a multi-code record names the record too.
    with pytest.raises(DataError, match=r"HR06000: label outside the mapping: '164934002,426783006'"):
        load_dataset(DataSpec(path=str(folder), classes=CODES[:3]), tmp_path / "c")


def test_unreadable_headers_name_file_and_line(cinc: Path, tmp_path: Path) -> None:
    folder = _copy_records(cinc, tmp_path / "hdr", ["HR06000"])
    hea = folder / "HR06000.hea"
    lines = hea.read_text().splitlines()
    hea.write_text("\n".join([lines[0], "HR06000.mat sixteen x", *lines[2:]]) + "\n")
    with pytest.raises(DataError, match=r"HR06000\.hea line 2: cannot parse signal line"):
        read_header(hea)
    hea.write_text("HR06000 12 500 5000 yesterday\n")
    with pytest.raises(DataError, match=r"HR06000\.hea line 1: expected '\[HH:MM:SS"):
        read_header(hea)
    # A .dat record (read through wfdb) with the date before the time: named, with the fix.
    sig = wfdb.rdrecord(str(cinc / "HR06000"), channel_names=["I"]).p_signal
    wfdb.wrsamp("D1", fs=500, units=["mV"], sig_name=["I"], p_signal=sig, fmt=["212"], write_dir=str(folder))
    d1 = folder / "D1.hea"
    d1.write_text(d1.read_text().replace("D1 1 500 5000", "D1 1 500 5000 01/05/2014 05:05:15", 1))
    with pytest.raises(DataError, match=r"D1\.hea line 1: date before time .*put the time before the date"):
        read_signal(read_header(d1))


# ------------------------------------------------------------------ spec and segment formats


def test_preprocessing_on_segment_formats(txt_sample: Path, tmp_path: Path) -> None:
    base = load_dataset(DataSpec(path=str(txt_sample), normalize="none"), tmp_path)
    spec = DataSpec(path=str(txt_sample), target_fs=125, window=2.0, stride=1.0, normalize="none")
    ds = load_dataset(spec, tmp_path)
    # 5 s at 125 Hz = 625 samples -> windows of 250 every 125: 4 per segment
    assert ds.x.shape == (344 * 4, 1, 250) and ds.fs == 125
    np.testing.assert_array_equal(ds.y, np.repeat(base.y, 4))
    expected = resample_poly(np.asarray(base.x[0, 0]), 1, 2)[125:375]
    np.testing.assert_allclose(ds.x[1, 0], expected, atol=1e-5)
    # The streaming npz path gives the same rows as the in-memory path.
    raw = np.asarray(base.x[:, 0])
    npz = tmp_path / "seg.npz"
    np.savez(npz, signal=raw, label=np.where(base.y == 1, "AFIB", "N"), subject=base.subject)
    streamed = load_dataset(DataSpec(path=str(npz), target_fs=125, window=2.0, stride=1.0,
                                     bandpass=[0.5, 40], normalize="none"), tmp_path)
    in_memory = load_dataset(DataSpec(path=str(txt_sample), target_fs=125, window=2.0, stride=1.0,
                                      bandpass=[0.5, 40], normalize="none"), tmp_path)
    np.testing.assert_allclose(streamed.x, in_memory.x, atol=1e-5)
    with pytest.raises(DataError, match=r"DataSpec\.leads = \['II'\]: format 'iesd_txt' has no lead names"):
        load_dataset(DataSpec(path=str(txt_sample), leads=["II"]), tmp_path)


def test_new_spec_fields_validate_and_keep_old_cache_keys(txt_sample: Path) -> None:
    plain = DataSpec(path=str(txt_sample))
    explicit = DataSpec(path=str(txt_sample), target_fs=None, window=None, leads="all", bandpass=None,
                        multilabel=False, window_mixed="drop", rhythm_default="N")
    assert plain.cache_key() == explicit.cache_key() and plain.task == "binary"
    assert plain.cache_key() != DataSpec(path=str(txt_sample), target_fs=125).cache_key()
    assert DataSpec.from_dict(DataSpec(leads=["II"], bandpass=[0.5, None]).to_dict()).leads == ("II",)
    for kwargs, pattern in [
        ({"target_fs": 0}, r"DataSpec\.target_fs = 0"),
        ({"window": -1}, r"DataSpec\.window = -1\.0: must be a positive number of seconds"),
        ({"stride": 1.0}, r"DataSpec\.stride = 1\.0: needs window"),
        ({"window_mixed": "keep"}, r"DataSpec\.window_mixed = 'keep'"),
        ({"bandpass": [40, 0.5]}, r"DataSpec\.bandpass = \[40\.0, 0\.5\]: low must be < high"),
        ({"bandpass": [0.5, 200], "target_fs": 250}, r"high must be below target_fs / 2 = 125 Hz"),
        ({"bandpass": "0.5-40"}, r"DataSpec\.bandpass = '0\.5-40': must be \[low, high\]"),
        ({"leads": ["II", "ii"]}, r"lead names must be unique"),
        ({"ptbxl_labels": "form"}, r"DataSpec\.ptbxl_labels = 'form'"),
        ({"multilabel": True, "classes": []}, r"DataSpec\.classes = \(\)"),
    ]:
        with pytest.raises(DataError, match=pattern):
            DataSpec(**kwargs)
