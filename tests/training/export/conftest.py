from __future__ import annotations

import pytest

from tests.training.export.tiny_run import TinyRun, build_tiny_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return build_tiny_run(tmp_path_factory.getbasetemp() / "tiny-run")
