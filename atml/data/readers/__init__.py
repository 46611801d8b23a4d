"""Readers that turn user data on disk into :class:`~atml.data.readers.registry.RawData`.

One module per format: :mod:`.iesd` (IESD/ATML text segments), :mod:`.npz` (numpy
archives, also streamed), :mod:`.wfdb_layouts` (PTB-XL, CinC 2017/2020/2021, rhythm and
CSV-labelled WFDB folders, built on :mod:`.wfdb_records` and :mod:`.wfdb_io`).  The format
registry and detection live in :mod:`.registry`.  Consumers import the submodules (or the
names re-exported by :mod:`atml.data`); this package face stays empty so that importing the
registry never pulls in a reader.
"""
