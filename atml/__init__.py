"""ATML: AutoML search for ECG classifiers.

Importing :mod:`atml` loads neither torch nor fastapi; the heavy parts live in
submodules (``atml.search``, ``atml.search.worker``, ``atml.onnx.export``, ``atml.dashboard``).
"""

from __future__ import annotations

from atml.errors import AtmlError, DataError, ExportError, SpaceError, StorageError

__version__ = "0.1.0"

__all__ = ["AtmlError", "DataError", "ExportError", "SpaceError", "StorageError", "__version__"]
