"""Errors of the data layer: a file or a data set that cannot be used as it is.

:class:`DataError` is a ValueError, so callers that catch ValueError keep working; recipes
turn it into a :class:`~toolkit.config.ConfigError` at their boundary (the data layer itself
knows nothing of configs). :class:`MRIDataError` is the brain-MRI readers' error naming a file.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DataError", "MRIDataError"]


class DataError(ValueError):
    """Data that cannot be used: a missing, unreadable or malformed file or data set; the message names it."""


class MRIDataError(DataError):
    """A bad MRI data file. ``path`` (Path) is the file, ``reason`` (str) the problem; str() is "path: reason"."""

    def __init__(self, path: str | os.PathLike, reason: str = ""):
        # one argument = a whole message: DataLoader re-raises a worker's error as type(err)(text)
        super().__init__(f"{path}: {reason}" if reason else str(path))
        self.path, self.reason = (Path(path), reason) if reason else (None, str(path))

    def __reduce__(self):  # picklable, so it crosses DataLoader worker boundaries intact
        return MRIDataError, ((self.path, self.reason) if self.path is not None else (self.reason,))
