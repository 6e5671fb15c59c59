"""The P5 / S3-Rec sequential format: ``sequential_data.txt`` (+ optional ``datamaps.json``).

Each line is ``user item item ...`` in chronological order (no timestamps: the position is used, so
the order is kept exactly). With ``datamaps.json`` (``id2user`` / ``id2item``) the numeric ids become the
original ones. The format carries no item text or categories: items get an empty title (their text falls
back to the id) and no tags.
"""

from __future__ import annotations

import json
from pathlib import Path

from training.data.dataset import Item
from training.data.files import read_lines, require_dir
from training.data.raw import RawData
from training.errors import DataError

__all__ = ["read_p5"]


def _datamaps(path: Path) -> tuple[dict[str, str], dict[str, str]] | None:
    if not path.is_file():
        return None
    try:
        maps = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    if not isinstance(maps, dict) or not all(isinstance(maps.get(k), dict) for k in ("id2user", "id2item")):
        raise DataError(f"{path}: expected objects 'id2user' and 'id2item'")
    return maps["id2user"], maps["id2item"]


def _sort_key(item_id: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order, others after them in text order."""
    return (0, int(item_id)) if item_id.isdigit() else (1, item_id)


def read_p5(folder: Path) -> RawData:
    require_dir(folder)
    path = folder / "sequential_data.txt"
    maps = _datamaps(folder / "datamaps.json")
    users: list[str] = []
    item_ids: list[str] = []
    timestamps: list[int] = []
    seen_users: dict[str, int] = {}
    raw_items: dict[str, str] = {}  # file id -> external id
    for line_no, line in read_lines(path):
        user, *items = line.split()
        if not items:
            raise DataError(f"{path}:{line_no}: user {user!r} has no interactions")
        if user in seen_users:
            raise DataError(f"{path}:{line_no}: user {user!r} already on line {seen_users[user]}")
        seen_users[user] = line_no
        if maps is not None:
            if user not in maps[0]:
                raise DataError(f"{path}:{line_no}: user {user!r} is not in datamaps.json id2user")
            missing = [i for i in items if i not in maps[1]]
            if missing:
                raise DataError(f"{path}:{line_no}: item {missing[0]!r} is not in datamaps.json id2item")
            user = maps[0][user]
        for position, item in enumerate(items):
            external = raw_items.setdefault(item, maps[1][item] if maps is not None else item)
            users.append(user)
            item_ids.append(external)
            timestamps.append(position)
    items_in_order = [Item(item_id=raw_items[i], title="") for i in sorted(raw_items, key=_sort_key)]
    return RawData(items=items_in_order, users=users, item_ids=item_ids, timestamps=timestamps)
