"""Label mapping (atml.data.labels) on the real labels: the 50,000 IESD rhythm labels of
train.npz (AFIB vs the rest) and the SNOMED Dx codes of the CinC 2021 headers (multi-label).

Expected values are counted from the files with numpy and plain text parsing.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from atml.data.labels import map_labels, split_multilabel
from atml.data.spec import DataSpec
from atml.errors import DataError

SR, STACH, PAC = "426783006", "427084000", "284470004"  # sinus rhythm, sinus tachycardia, PAC


@pytest.fixture(scope="module")
def iesd_labels(train_npz: Path) -> np.ndarray:
    with np.load(train_npz) as z:
        return z["label"].astype(str)


@pytest.fixture(scope="module")
def dx_labels(shared_data: Path) -> np.ndarray:
    """Comma-joined Dx codes per CinC 2021 record, read from the header text."""
    out = []
    for header in sorted((shared_data / "cinc2021_sample").glob("*.hea")):
        dx = next(line for line in header.read_text().splitlines() if line.startswith("# Dx:"))
        out.append(dx.split(":", 1)[1].strip())
    return np.array(out)


def test_afib_is_class_one_and_every_other_rhythm_class_zero(iesd_labels: np.ndarray) -> None:
    counts = Counter(iesd_labels.tolist())
    res = map_labels(iesd_labels, DataSpec())
    assert res.keep.all() and res.dropped == 0 and res.unmapped == 0
    assert res.y.dtype == np.int64 and res.y.shape == (50000,)
    assert int(res.y.sum()) == counts["AFIB"] == 22724
    np.testing.assert_array_equal(res.y, (iesd_labels == "AFIB").astype(np.int64))
    assert set(iesd_labels[res.y == 0].tolist()) == {"N", "SBR", "UNK", "AB", "T", "B", "SVTA"}


def test_dropped_labels_leave_the_data_before_mapping(iesd_labels: np.ndarray) -> None:
    res = map_labels(iesd_labels, DataSpec(drop_labels=("UNK",), positive=("AFIB", "AB")))
    assert res.dropped == 800 and int(res.keep.sum()) == 49200
    assert not np.isin(iesd_labels[res.keep], ["UNK"]).any()
    assert int(res.y.sum()) == 22724 + 144  # AFIB and AB both positive now
    np.testing.assert_array_equal(res.y, np.isin(iesd_labels[res.keep], ["AFIB", "AB"]))


def test_multiclass_by_class_name_and_a_label_outside_the_classes(iesd_labels: np.ndarray) -> None:
    spec = DataSpec(classes=("N", "AFIB", "SBR"), drop_labels=("UNK",))
    names = lambda i: f"train.npz[row {i}]"  # noqa: E731 - the reader's item naming
    first_other = int(np.flatnonzero(np.isin(iesd_labels, ["AB", "T", "B", "SVTA"]))[0])
    with pytest.raises(DataError, match=rf"train\.npz\[row {first_other}\]: label outside the mapping: "
                                        r"'\w+' \(labels \['AB', 'B', 'SVTA', 'T'\] not in classes"):
        map_labels(iesd_labels, spec, names)
    res = map_labels(iesd_labels, DataSpec(classes=("N", "AFIB", "SBR"), drop_labels=("UNK",), on_bad="skip"),
                     names)
    assert res.unmapped == 144 + 78 + 46 + 32 and res.dropped == 800
    assert res.unmapped_example.startswith(f"train.npz[row {first_other}]")
    kept = iesd_labels[res.keep]
    np.testing.assert_array_equal(res.y, [{"N": 0, "AFIB": 1, "SBR": 2}[v] for v in kept])
    assert Counter(res.y.tolist()) == {0: 25178, 1: 22724, 2: 998}


def test_label_map_merges_rhythms_into_classes(iesd_labels: np.ndarray) -> None:
    label_map = {"N": 0, "SBR": 0, "T": 0, "AFIB": 1, "AB": 2, "B": 2, "SVTA": 2}
    res = map_labels(iesd_labels, DataSpec(classes=("sinus", "AF", "ectopic"), label_map=label_map,
                                           drop_labels=("UNK",)))
    assert res.unmapped == 0 and int(res.keep.sum()) == 49200
    np.testing.assert_array_equal(res.y, [label_map[v] for v in iesd_labels[res.keep]])


def test_multilabel_rows_follow_the_header_codes(dx_labels: np.ndarray) -> None:
    classes = (SR, STACH, PAC)
    res = map_labels(dx_labels, DataSpec(multilabel=True, classes=classes))
    assert res.y.dtype == np.float32 and res.y.shape == (50, 3) and res.keep.all()
    for row, text in zip(res.y, dx_labels.tolist(), strict=True):
        codes = split_multilabel(text)
        assert row.tolist() == [float(c in codes) for c in classes]
    assert res.y.sum(axis=0).tolist() == [15, 23, 20]  # each code's record count
    # Records with none of the classes: kept as all-zero rows, or dropped with drop_empty.
    empty = ~res.y.any(axis=1)
    assert empty.any()
    dropped = map_labels(dx_labels, DataSpec(multilabel=True, classes=classes, drop_empty=True))
    np.testing.assert_array_equal(dropped.keep, ~empty)
    assert dropped.dropped == int(empty.sum())
    # drop_labels removes every record carrying the label, whatever else it carries.
    no_pac = map_labels(dx_labels, DataSpec(multilabel=True, classes=(SR, STACH), drop_labels=(PAC,)))
    np.testing.assert_array_equal(no_pac.keep, [PAC not in split_multilabel(t) for t in dx_labels.tolist()])


def test_strict_multilabel_makes_unknown_codes_bad_items(dx_labels: np.ndarray) -> None:
    every = tuple(sorted({c for t in dx_labels.tolist() for c in split_multilabel(t)}))
    assert map_labels(dx_labels, DataSpec(multilabel=True, classes=every, strict_labels=True)).unmapped == 0
    spec = DataSpec(multilabel=True, classes=(SR, STACH, PAC), strict_labels=True)
    with pytest.raises(DataError, match=r"item \d+: label\(s\) outside the mapping: \['\d+'"):
        map_labels(dx_labels, spec)
    skip = map_labels(dx_labels, DataSpec(multilabel=True, classes=(SR, STACH, PAC), strict_labels=True,
                                          on_bad="skip"))
    allowed = {SR, STACH, PAC}
    only_known = [set(split_multilabel(t)) <= allowed for t in dx_labels.tolist()]
    np.testing.assert_array_equal(skip.keep, only_known)
    assert skip.unmapped == only_known.count(False)


def test_split_multilabel_trims_and_skips_empty_parts() -> None:
    assert split_multilabel("164934002, 426783006") == ["164934002", "426783006"]
    assert split_multilabel(" 426783006,,") == ["426783006"]
    assert split_multilabel("") == []
