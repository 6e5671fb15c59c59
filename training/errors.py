"""The offline side's error hierarchy.

Every error a user can cause (a missing file, a malformed line, a bad config value) is raised as a
``SidrecError`` subclass carrying a message that names the file, line or field. The CLI prints that
message and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "SidrecError"]


class SidrecError(Exception):
    """Base class of every error the user can fix."""


class DataError(SidrecError):
    """Input data is missing, malformed or unusable (names the file and line)."""


class ConfigError(SidrecError):
    """A configuration file or ``--set`` override is invalid (names the key)."""
