"""Data loading for atml: readers for user formats, synthetic ECG, subject splits, caching.

Importing this package registers every built-in format with detection (each reader module
registers itself on import; the IESD reader places itself ahead of the WFDB layouts).
"""

from __future__ import annotations

from atml.data.cache import Dataset, load_dataset, load_test_dataset
from atml.data.labels import map_labels
from atml.data.preprocess import normalize, subsample
from atml.data.readers.iesd import read_iesd_folder
from atml.data.readers.npz import NpzStream, read_npz
from atml.data.readers.registry import READERS, RawData, detect_format, register_format, shared_data_dir
from atml.data.readers.wfdb_layouts import (
    read_cinc2017,
    read_cinc2020,
    read_ptbxl,
    read_wfdb_csv,
    read_wfdb_rhythm,
)
from atml.data.section import spec_from_section
from atml.data.spec import DataSpec
from atml.data.splits import Split, subject_split
from atml.data.synthetic import SyntheticTruth, generate_synthetic, synthetic_ecg

__all__ = [
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
    "spec_from_section",
    "subject_split",
    "subsample",
    "synthetic_ecg",
]
