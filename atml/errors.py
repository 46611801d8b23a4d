from __future__ import annotations


class AtmlError(Exception):
    """Root of every user-facing error; the CLI prints it as one line and exits 2."""


class SpaceError(AtmlError): ...


class DataError(AtmlError): ...


class StorageError(AtmlError): ...


class ExportError(AtmlError): ...
