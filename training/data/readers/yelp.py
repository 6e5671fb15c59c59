"""Yelp open dataset: ``yelp_academic_dataset_business.json`` + ``..._review.json`` (JSON lines).

Businesses are the items (title = name); every review is an interaction, timed by its ``date``. Yelp
categories are a flat, unordered list; a business's tag path is ``("Businesses", *categories)`` with
its categories most common in the catalogue first (``tags.label_paths``): "Restaurants > Pizza". A
review of a business missing from the business file is an error.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from training.data.dataset import Item
from training.data.files import field, find_one, parse_json_line, read_lines, require_dir
from training.data.raw import RawData
from training.data.tags import label_paths
from training.errors import DataError

__all__ = ["read_yelp"]

ROOT = "Businesses"


def _categories(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list):
        raise DataError(f"{where}: 'categories' must be a comma-separated string or a list")
    return [str(name).strip() for name in value if str(name).strip()]


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
    ids: list[str] = []
    names: list[str] = []
    categories: list[list[str]] = []
    known: dict[str, int] = {}
    for line_no, line in read_lines(business_path):
        where = f"{business_path}:{line_no}"
        row = parse_json_line(business_path, line_no, line)
        business = field(row, "business_id", str, where)
        if business in known:
            raise DataError(f"{where}: duplicate business_id {business!r} (first on line {known[business]})")
        known[business] = line_no
        name = row.get("name")
        ids.append(business)
        names.append(name if isinstance(name, str) else "")
        categories.append(_categories(row.get("categories"), where))
    items = [
        Item(item_id=business, title=name, category_path=path)
        for business, name, path in zip(ids, names, label_paths(ROOT, categories), strict=True)
    ]
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
