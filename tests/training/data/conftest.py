"""Shared fixtures of the data-layer tests: the real benchmark folder and a tiny own-format writer."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"

ItemRow = dict[str, object]
Interaction = tuple[str, str, int]


def shared_dataset(name: str) -> Path:
    """The real benchmark folder, or a skip that says why."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real benchmark data not present at {path}")
    return path


def write_sidrec(folder: Path, items: list[ItemRow], interactions: list[Interaction]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.jsonl").write_text("".join(json.dumps(row) + "\n" for row in items))
    lines = ["user_id\titem_id\ttimestamp"] + [f"{u}\t{i}\t{t}" for u, i, t in interactions]
    (folder / "interactions.tsv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def sidrec_folder(tmp_path: Path) -> Callable[[list[ItemRow], list[Interaction]], Path]:
    return lambda items, interactions: write_sidrec(tmp_path / "src", items, interactions)
