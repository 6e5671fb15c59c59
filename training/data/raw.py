"""What every reader returns, and the one way it becomes a canonical ``Dataset``.

Readers only parse; ordering, filtering and tagging happen here once for all formats, so a Beauty
prepared from our own files, from the raw Amazon dump or from the P5 files comes out the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from training.data.dataset import Dataset, Item
from training.data.tags import TagVocabulary, auto_min_count
from training.errors import ConfigError, DataError

__all__ = ["BuildOptions", "RawData", "build_dataset", "kcore_filter"]


@dataclass
class RawData:
    """A reader's output: the catalogue and the interactions in file order.

    ``items`` is in catalogue order (it becomes the dense index, after dropping items nobody touched);
    every interaction's item id must be in it. ``notes`` counts what the reader wants the summary to
    report, by reason: lines it skipped on purpose (documented per reader), items without metadata.
    """

    items: list[Item]
    users: list[str]
    item_ids: list[str]
    timestamps: list[int]
    notes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildOptions:
    """How raw interactions become the canonical dataset."""

    tag_levels: int = 3
    #: classes with fewer items merge into ``<other>``; None: ``tags.auto_min_count`` of the catalogue
    min_tag_count: int | None = 30
    kcore: int = 0
    min_user_items: int = 3
    #: drop an interaction that repeats the user's previous item (see ``build_dataset``); ``prepare``
    #: does unless ``--keep-repeats``, code that builds a dataset directly keeps them unless it asks
    drop_repeats: bool = False

    def __post_init__(self) -> None:
        if self.kcore < 0:
            raise ConfigError(f"kcore must be >= 0, got {self.kcore}")
        if self.min_user_items < 1:
            raise ConfigError(f"min_user_items must be >= 1, got {self.min_user_items}")


def kcore_filter(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Keep-mask of interactions such that every remaining user and item has at least ``k`` of them.

    Iterative: dropping a rare item can push a user under ``k`` and so on, until nothing changes.
    """
    keep = np.ones(len(users), dtype=bool)
    if k <= 1:
        return keep
    while True:
        user_counts = np.bincount(users[keep], minlength=users.max(initial=-1) + 1)
        item_counts = np.bincount(items[keep], minlength=items.max(initial=-1) + 1)
        new_keep = keep & (user_counts[users] >= k) & (item_counts[items] >= k)
        if (new_keep == keep).all():
            return keep
        keep = new_keep


def _codes(values: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Integer code per value, numbered in order of first appearance."""
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64, count=len(values))
    return codes, list(index)


def build_dataset(raw: RawData, options: BuildOptions) -> tuple[Dataset, dict[str, int]]:
    """Filter, order and tag ``raw``; returns the dataset and what was dropped, by reason.

    Users keep the order of their first interaction in the file; each sequence is sorted by timestamp
    with ties in file order (a format without timestamps gives file order). With ``drop_repeats``, an
    interaction with the same item as the user's previous one is dropped first
    (``interactions_repeated``): a served recommendation leaves out the items already seen, so a
    repeat could never be hit, and it would only teach the model to echo the last item. Then the
    k-core (``interactions_kcore``; off by default) and users with fewer than ``min_user_items``
    interactions (``users_short``). Items keep catalogue order, minus those left without interactions;
    rare items are kept (their IDs come from their text).
    """
    if not raw.users:
        raise DataError("the source has no interactions")
    catalogue = {item.item_id: i for i, item in enumerate(raw.items)}
    user_codes, user_names = _codes(raw.users)
    try:
        item_rows = np.fromiter((catalogue[i] for i in raw.item_ids), dtype=np.int64, count=len(raw.item_ids))
    except KeyError as exc:
        raise DataError(f"interaction with item {exc.args[0]!r}, which is not in the item table") from exc
    times = np.asarray(raw.timestamps, dtype=np.int64)

    dropped: dict[str, int] = {}
    keep = np.ones(len(times), dtype=bool)
    if options.drop_repeats:
        timeline = np.lexsort((times, user_codes))  # per user, by time, ties in file order
        same = (np.diff(user_codes[timeline]) == 0) & (np.diff(item_rows[timeline]) == 0)
        keep[timeline[1:][same]] = False
    dropped["interactions_repeated"] = int((~keep).sum())
    remaining = np.flatnonzero(keep)
    core = kcore_filter(user_codes[remaining], item_rows[remaining], options.kcore)
    keep[remaining[~core]] = False
    dropped["interactions_kcore"] = int((~core).sum())
    user_counts = np.bincount(user_codes[keep], minlength=len(user_names))
    short_users = (user_counts > 0) & (user_counts < options.min_user_items)
    dropped["users_short"] = int(short_users.sum())
    keep &= ~short_users[user_codes]
    if not keep.any():
        raise DataError("no interactions left after filtering (check --kcore / --min-user-items)")

    used_rows = np.unique(item_rows[keep])  # catalogue rows that survive, in catalogue order
    dropped["items_without_interactions"] = len(raw.items) - len(used_rows)
    dense = np.full(len(raw.items), -1, dtype=np.int64)
    dense[used_rows] = np.arange(len(used_rows))
    items = [raw.items[row] for row in used_rows]

    kept = np.flatnonzero(keep)
    # Group by user (first appearance), then by time; lexsort is stable, so ties keep file order.
    order = kept[np.lexsort((times[kept], user_codes[kept]))]
    bounds = np.flatnonzero(np.diff(user_codes[order])) + 1
    groups = np.split(order, bounds)
    user_ids = [user_names[user_codes[group[0]]] for group in groups]
    sequences = [dense[item_rows[group]] for group in groups]
    timestamps = [times[group] for group in groups]

    min_count = options.min_tag_count if options.min_tag_count is not None else auto_min_count(len(items))
    tags = TagVocabulary.build([item.category_path for item in items], options.tag_levels, min_count)
    dataset = Dataset(items=items, user_ids=user_ids, sequences=sequences, timestamps=timestamps, tags=tags)
    return dataset, dropped
