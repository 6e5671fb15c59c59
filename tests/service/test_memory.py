"""The serving process's memory settings (``service.memory``)."""

from __future__ import annotations

import platform

from service.memory import tune_allocator


def test_allocator_is_tuned_where_glibc_is() -> None:
    """glibc accepts both thresholds (``mallopt`` returns 1 each); elsewhere the call is a no-op."""
    assert tune_allocator() is (platform.libc_ver()[0] == "glibc")
