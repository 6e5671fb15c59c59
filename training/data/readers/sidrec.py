"""Our own documented format (the one in ../shared/data): ``items.jsonl`` + ``interactions.tsv``.

``items.jsonl``: one object per item with ``item_id`` (required), ``title``, ``brand`` (or null),
``description`` (optional) and ``category_path`` (list, root first; optional). ``interactions.tsv``: a
header ``user_id<TAB>item_id<TAB>timestamp`` and one row per interaction (unix seconds), or a header
``user_id<TAB>item_id`` and rows without timestamps, in the order they happened (the line number is
then the timestamp). Nothing is skipped: any malformed line, duplicate item or unknown item id is an
error naming the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.data.dataset import Item
from training.data.files import parse_json_line, read_lines, require_dir
from training.data.raw import RawData
from training.errors import DataError

__all__ = ["read_sidrec"]

HEADER = ["user_id", "item_id", "timestamp"]


def _optional_str(row: dict[str, Any], name: str, where: str) -> str | None:
    value = row.get(name)
    if value is not None and not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} must be a string or null, got {value!r}")
    return value


def read_items(path: Path) -> list[Item]:
    items: list[Item] = []
    seen: dict[str, int] = {}
    for line_no, line in read_lines(path):
        where = f"{path}:{line_no}"
        row = parse_json_line(path, line_no, line)
        item_id = row.get("item_id")
        if not isinstance(item_id, str) or not item_id:
            raise DataError(f"{where}: field 'item_id' must be a non-empty string, got {item_id!r}")
        if item_id in seen:
            raise DataError(f"{where}: duplicate item_id {item_id!r} (first on line {seen[item_id]})")
        seen[item_id] = line_no
        path_value = row.get("category_path") or []
        if not isinstance(path_value, list) or not all(isinstance(c, str) for c in path_value):
            raise DataError(f"{where}: field 'category_path' must be a list of strings")
        items.append(
            Item(
                item_id=item_id,
                title=_optional_str(row, "title", where) or "",
                brand=_optional_str(row, "brand", where),
                description=_optional_str(row, "description", where),
                category_path=tuple(path_value),
            )
        )
    return items


def read_sidrec(folder: Path) -> RawData:
    """Read ``folder/items.jsonl`` and ``folder/interactions.tsv``."""
    require_dir(folder)
    items = read_items(folder / "items.jsonl")
    known = {item.item_id for item in items}
    path = folder / "interactions.tsv"
    users: list[str] = []
    item_ids: list[str] = []
    timestamps: list[int] = []
    lines = read_lines(path)
    first = next(lines, None)
    header = first[1].split("\t") if first is not None else []
    if header not in (HEADER, HEADER[:2]):
        raise DataError(
            f"{path}:1: expected the header {'<TAB>'.join(HEADER)!r} (or without '<TAB>timestamp')"
        )
    for line_no, line in lines:
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DataError(
                f"{path}:{line_no}: expected {len(header)} tab-separated fields, got {len(fields)}"
            )
        user, item, stamp = fields if len(fields) == 3 else (*fields, str(line_no))
        if item not in known:
            raise DataError(f"{path}:{line_no}: item_id {item!r} is not in items.jsonl")
        try:
            timestamps.append(int(stamp))
        except ValueError:
            raise DataError(f"{path}:{line_no}: timestamp {stamp!r} is not an integer") from None
        if not user:
            raise DataError(f"{path}:{line_no}: empty user_id")
        users.append(user)
        item_ids.append(item)
    return RawData(items=items, users=users, item_ids=item_ids, timestamps=timestamps)
