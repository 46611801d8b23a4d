"""Bad inputs fail with a DataError naming the file; on_bad="skip" drops and counts them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from atml.data import DataSpec, load_dataset, read_iesd_folder
from atml.errors import DataError

GOOD = ["S1-AFIB-100.txt", "S1-N-1.txt", "S19-AFIB-1040.txt", "S36-N-1.txt"]


@pytest.fixture()
def good_names(txt_sample: Path) -> list[str]:
    names = {p.name for p in txt_sample.iterdir()}
    # Pick real files by prefix so the test does not depend on exact segment numbers.
    picked = []
    for prefix in ("S1-AFIB-", "S1-N-", "S19-AFIB-", "S36-N-", "S1-AB-"):
        picked.append(sorted(n for n in names if n.startswith(prefix))[0])
    return picked


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def test_wrong_length_names_file(copy_sample, good_names) -> None:
    folder = copy_sample(good_names)
    bad = folder / good_names[0]
    _write_lines(bad, _lines(bad)[:-1])
    with pytest.raises(DataError, match=rf"{good_names[0]}: 1249 samples, expected 1250"):
        read_iesd_folder(folder)


def test_non_numeric_line_names_file_and_line(copy_sample, good_names) -> None:
    folder = copy_sample(good_names)
    bad = folder / good_names[1]
    lines = _lines(bad)
    lines[16] = "0.01x"
    _write_lines(bad, lines)
    with pytest.raises(DataError, match=rf"{good_names[1]} line 17: not a number: '0.01x'"):
        read_iesd_folder(folder)


@pytest.mark.parametrize("token", ["nan", "inf", "-Infinity"])
def test_non_finite_value_names_file_and_line(copy_sample, good_names, token: str) -> None:
    folder = copy_sample(good_names)
    bad = folder / good_names[2]
    lines = _lines(bad)
    lines[4] = token
    _write_lines(bad, lines)
    with pytest.raises(DataError, match=rf"{good_names[2]} line 5: non-finite value"):
        read_iesd_folder(folder)


def test_empty_folder_and_missing_path(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty"):
        load_dataset(DataSpec(path=str(empty)), tmp_path / "cache")
    with pytest.raises(DataError, match=r"empty: no S<subject>-<label>-<index>\.txt"):
        read_iesd_folder(empty)
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=r"does not exist: .*nowhere"):
        load_dataset(DataSpec(path=str(missing)), tmp_path / "cache")
    with pytest.raises(DataError, match=r"does not exist: .*nowhere"):
        load_dataset(DataSpec(path=str(missing), format="iesd_txt"), tmp_path / "cache")


def test_unknown_file_name_pattern(copy_sample, good_names, txt_sample: Path) -> None:
    folder = copy_sample(good_names)
    (folder / "segment_7.txt").write_bytes((txt_sample / good_names[0]).read_bytes())
    with pytest.raises(DataError, match=r"segment_7\.txt: unknown file name pattern"):
        read_iesd_folder(folder)


def test_label_outside_mapping_names_file(copy_sample, good_names, tmp_path: Path) -> None:
    folder = copy_sample(good_names)
    spec = DataSpec(path=str(folder), label_map={"AFIB": 1, "N": 0})
    with pytest.raises(DataError, match=rf"{good_names[4]}: label outside the mapping: 'AB'"):
        load_dataset(spec, tmp_path / "cache")
    # Dropping the label first makes the mapping complete.
    ds = load_dataset(
        DataSpec(path=str(folder), label_map={"AFIB": 1, "N": 0}, drop_labels=("AB",)), tmp_path / "cache"
    )
    assert len(ds.y) == 4 and ds.skipped == 0


def test_skip_mode_counts_bad_items_and_warns_once(copy_sample, good_names, tmp_path: Path, caplog) -> None:
    folder = copy_sample(good_names)
    short = folder / good_names[0]
    _write_lines(short, _lines(short)[:100])
    text = folder / good_names[1]
    _write_lines(text, ["abc"] + _lines(text)[1:])
    (folder / "notes.txt").write_text("hello\n")
    (folder / "README.md").write_text("ignored: not a .txt file\n")
    spec = DataSpec(path=str(folder), on_bad="skip", label_map={"AFIB": 1, "N": 0})
    with caplog.at_level(logging.WARNING, logger="atml.data"):
        ds = load_dataset(spec, tmp_path / "cache")
    # 3 bad files + 1 file whose label (AB) is outside the mapping
    assert ds.skipped == 4
    assert len(ds.y) == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 4" in warnings[0].getMessage()
    assert f"{good_names[0]}: 100 samples, expected 1250" in warnings[0].getMessage()  # first in name order


def test_skip_mode_with_nothing_usable_still_fails(copy_sample, good_names) -> None:
    folder = copy_sample(good_names[:1])
    bad = folder / good_names[0]
    _write_lines(bad, _lines(bad)[:10])
    with pytest.raises(DataError, match=r"no usable segments, 1 bad files"):
        read_iesd_folder(folder, on_bad="skip")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"format": "csv"}, r"DataSpec\.format = 'csv': must be one of"),
        ({"normalize": "minmax"}, r"DataSpec\.normalize = 'minmax'"),
        ({"on_bad": "ignore"}, r"DataSpec\.on_bad = 'ignore'"),
        ({"val_fraction": 1.5}, r"DataSpec\.val_fraction = 1\.5: must be in \[0, 1\)"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, r"val_fraction \+ test_fraction"),
        ({"label_map": {"AFIB": 2}}, r"label_map = \{'AFIB': 2\}: class id outside 0\.\.1"),
        ({"max_segments": 0}, r"DataSpec\.max_segments = 0"),
        ({"segment_length": 0}, r"DataSpec\.segment_length = 0"),
    ],
)
def test_spec_validation(kwargs: dict, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        DataSpec(**kwargs)
