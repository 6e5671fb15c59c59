"""The load test's errors: what its user can fix, printed as one line (exit status 2), no traceback.

Its own, so the harness runs beside a deployed service without the training package installed.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "LoadTestError"]


class LoadTestError(Exception):
    """Base class of every error the user can fix."""


class ConfigError(LoadTestError):
    """An option is invalid (names it)."""


class DataError(LoadTestError):
    """The service or the dataset cannot be used as asked (names the file, endpoint or item)."""
