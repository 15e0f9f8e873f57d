"""Typed errors for bad input: each names the file, the field and what was expected.

The command line turns any :class:`GlfaError` into one line on stderr and exit status 2.
"""

from __future__ import annotations

from pathlib import Path


class GlfaError(Exception):
    """Base class of every error caused by a user's input (files, configs, arguments)."""

    def __init__(self, message: str, *, path: str | Path | None = None, field: str | None = None):
        self.path = str(path) if path is not None else None
        self.field = field
        self.detail = message
        where = []
        if self.path:
            where.append(self.path)
        if field:
            where.append(field)
        prefix = ": ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ConfigError(GlfaError):
    """A configuration file or value is invalid (unknown key, wrong type, impossible value)."""


class DataError(GlfaError):
    """A data file is missing, unreadable or inconsistent with the rest of the study."""


class StoreError(GlfaError):
    """A study store is incomplete, corrupt, or written by an incompatible version."""


class CheckpointError(GlfaError):
    """A checkpoint or saved model is missing, corrupt or half-written."""


class BackboneError(GlfaError):
    """A pretrained backbone folder (or hub id) is missing, incomplete or of the wrong kind."""


class NotFittedError(GlfaError):
    """An estimator was used before ``fit``."""


class OutputError(GlfaError):
    """An output location cannot be written (a file where a folder is expected, a read-only folder)."""
