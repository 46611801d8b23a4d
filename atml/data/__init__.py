"""Data loading for atml: readers for user formats, synthetic ECG, subject splits, caching."""

from __future__ import annotations

from atml.data.cache import Dataset, load_dataset, load_test_dataset
from atml.data.preprocess import DataSpec, map_labels, normalize, subsample
from atml.data.readers import (
    READERS,
    NpzStream,
    RawData,
    detect_format,
    read_iesd_folder,
    read_npz,
    register_format,
    shared_data_dir,
)
from atml.data.section import spec_from_section
from atml.data.splits import Split, subject_split
from atml.data.synthetic import SyntheticTruth, generate_synthetic, synthetic_ecg

# Imported for its side effect too: registers the WFDB layouts with format detection.
from atml.data.wfdb_readers import (  # noqa: I001 - after readers, whose registry it fills
    read_cinc2017,
    read_cinc2020,
    read_ptbxl,
    read_wfdb_csv,
    read_wfdb_rhythm,
)

__all__ = [
    "spec_from_section",
    "READERS",
    "DataSpec",
    "Dataset",
    "NpzStream",
    "RawData",
    "Split",
    "SyntheticTruth",
    "detect_format",
    "generate_synthetic",
    "load_dataset",
    "load_test_dataset",
    "map_labels",
    "normalize",
    "read_cinc2017",
    "read_cinc2020",
    "read_iesd_folder",
    "read_npz",
    "read_ptbxl",
    "read_wfdb_csv",
    "read_wfdb_rhythm",
    "register_format",
    "shared_data_dir",
    "subject_split",
    "subsample",
    "synthetic_ecg",
]
