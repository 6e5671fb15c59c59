"""Yelp open dataset: ``yelp_academic_dataset_business.json`` + ``..._review.json`` (JSON lines).

Businesses are the items (title = name); every review is an interaction, timed by its ``date``. Yelp
categories are a flat, unordered list, so only the first one becomes a one-level tag path
``("Businesses", category)``. A review of a business missing from the business file is an error.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from training.data.dataset import Item
from training.data.files import field, find_one, parse_json_line, read_lines, require_dir
from training.data.raw import RawData
from training.errors import DataError

__all__ = ["read_yelp"]

ROOT = "Businesses"


def _first_category(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list):
        raise DataError(f"{where}: 'categories' must be a comma-separated string or a list")
    names = [str(name).strip() for name in value if str(name).strip()]
    return names[0] if names else None


def _timestamp(text: str, where: str) -> int:
    for layout in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return int(datetime.strptime(text, layout).replace(tzinfo=UTC).timestamp())
        except ValueError:
            continue
    raise DataError(f"{where}: date {text!r} is not YYYY-MM-DD[ HH:MM:SS]")


def read_yelp(folder: Path) -> RawData:
    require_dir(folder)
    business_path = find_one(folder, ["yelp_academic_dataset_business.json", "business.json"], "business")
    review_path = find_one(folder, ["yelp_academic_dataset_review.json", "review.json"], "review")
    items: list[Item] = []
    known: set[str] = set()
    for line_no, line in read_lines(business_path):
        where = f"{business_path}:{line_no}"
        row = parse_json_line(business_path, line_no, line)
        business = field(row, "business_id", str, where)
        category = _first_category(row.get("categories"), where)
        name = row.get("name")
        items.append(
            Item(
                item_id=business,
                title=name if isinstance(name, str) else "",
                category_path=(ROOT, category) if category else (ROOT,),
            )
        )
        known.add(business)
    users: list[str] = []
    item_ids: list[str] = []
    timestamps: list[int] = []
    for line_no, line in read_lines(review_path):
        where = f"{review_path}:{line_no}"
        row = parse_json_line(review_path, line_no, line)
        business = field(row, "business_id", str, where)
        if business not in known:
            raise DataError(f"{where}: business_id {business!r} is not in {business_path.name}")
        users.append(field(row, "user_id", str, where))
        item_ids.append(business)
        timestamps.append(_timestamp(field(row, "date", str, where), where))
    return RawData(items=items, users=users, item_ids=item_ids, timestamps=timestamps)
