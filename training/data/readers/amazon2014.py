"""Amazon reviews 2014 (McAuley et al.): ``reviews_<Cat>_5.json.gz`` + ``meta_<Cat>.json.gz``.

The source is a folder holding one category's pair of files, or the reviews file itself (the meta file
is then looked up next to it). Review lines are JSON with ``reviewerID``, ``asin``, ``unixReviewTime``;
meta lines are Python-literal dicts in the original dump (read with ``ast.literal_eval``, which is safe)
with ``title``, ``brand``, ``description`` and ``categories``, a list of category paths of which the
first is the primary one. Meta records of items nobody reviewed are ignored; reviewed items without a
meta record keep an empty text and path, and are counted as ``items_without_meta``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from training.data.dataset import Item
from training.data.files import field, find_one, parse_record, read_lines
from training.data.raw import RawData
from training.errors import DataError

__all__ = ["read_amazon2014"]

#: cheap look-ahead so that the (slow) literal parser only runs on meta lines of reviewed items
ASIN = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")
REVIEWS = re.compile(r"reviews_(.+)_5\.json(\.gz)?$")


def _files(source: Path) -> tuple[Path, Path]:
    if source.is_dir():
        reviews = find_one(source, ["reviews_*_5.json.gz", "reviews_*_5.json"], "reviews_<Category>_5.json")
    else:
        reviews = source
    match = REVIEWS.match(reviews.name)
    if match is None:
        raise DataError(f"{reviews}: expected a file named reviews_<Category>_5.json(.gz)")
    category = match.group(1)
    meta = find_one(reviews.parent, [f"meta_{category}.json.gz", f"meta_{category}.json"], f"meta_{category}")
    return reviews, meta


def _text(value: Any) -> str | None:
    """Meta text fields are strings, sometimes lists of strings; empty means absent."""
    if isinstance(value, list):
        value = " ".join(str(v) for v in value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _primary_path(row: dict[str, Any], where: str) -> tuple[str, ...]:
    categories = row.get("categories") or []
    if not isinstance(categories, list) or not all(isinstance(path, list) for path in categories):
        raise DataError(f"{where}: 'categories' must be a list of category paths")
    if not categories:
        return ()
    if not all(isinstance(name, str) for name in categories[0]):
        raise DataError(f"{where}: 'categories' paths must hold strings")
    return tuple(categories[0])


def read_amazon2014(source: Path) -> RawData:
    reviews, meta = _files(source)
    users: list[str] = []
    item_ids: list[str] = []
    timestamps: list[int] = []
    order: dict[str, None] = {}  # reviewed items in order of first review
    for line_no, line in read_lines(reviews):
        where = f"{reviews}:{line_no}"
        row = parse_record(reviews, line_no, line)
        users.append(field(row, "reviewerID", str, where))
        asin = field(row, "asin", str, where)
        item_ids.append(asin)
        timestamps.append(field(row, "unixReviewTime", int, where))
        order.setdefault(asin)

    found: dict[str, Item] = {}
    for line_no, line in read_lines(meta):
        match = ASIN.search(line)
        if match is not None and match.group(1) not in order:
            continue
        where = f"{meta}:{line_no}"
        row = parse_record(meta, line_no, line)
        asin = field(row, "asin", str, where)
        if asin in order:
            found[asin] = Item(
                item_id=asin,
                title=_text(row.get("title")) or "",
                brand=_text(row.get("brand")),
                description=_text(row.get("description")),
                category_path=_primary_path(row, where),
            )
    items = [found.get(asin) or Item(item_id=asin, title="") for asin in order]
    return RawData(
        items=items,
        users=users,
        item_ids=item_ids,
        timestamps=timestamps,
        notes={"items_without_meta": len(order) - len(found)},
    )
