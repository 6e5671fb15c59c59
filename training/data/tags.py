"""Hierarchical tags: per-level class vocabularies built from item category paths.

The tags supervise the tokenizer's code levels (HiD-VAE), so they must say only what the catalogue says:
level ``l`` of an item is the ``l``-th category *below the root* of its category path, and nothing is ever
filled in from titles. A class is named by its full prefix path (``"Skin Care > Face"``) so that two
different parents' "Face" never share a class. Classes with fewer than ``min_count`` items merge into the
level's ``<other>`` (index 1); levels the path does not reach are ``<unknown>`` (index 0), which losses and
accuracies ignore.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from training.errors import ConfigError, DataError

__all__ = [
    "OTHER",
    "OTHER_ID",
    "SEPARATOR",
    "UNKNOWN",
    "UNKNOWN_ID",
    "TagVocabulary",
    "auto_min_count",
    "label_paths",
    "level_keys",
]

UNKNOWN = "<unknown>"
OTHER = "<other>"
UNKNOWN_ID = 0
OTHER_ID = 1
SEPARATOR = " > "


def level_keys(category_path: Sequence[str], n_levels: int) -> list[str | None]:
    """The class key of each level: the prefix path below the root, or None where the path is too short."""
    below_root = list(category_path[1:])
    return [
        SEPARATOR.join(below_root[: level + 1]) if level < len(below_root) else None
        for level in range(n_levels)
    ]


def label_paths(root: str, labels: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    """Category paths for a multi-label catalogue (MovieLens genres, Yelp categories).

    Each item's labels, most common in the catalogue first (ties by name), follow ``root``: level 1 is
    the item's broadest label, level 2 its next one, so "Drama > Romance" and "Comedy > Romance" are
    different classes of the second level. An item without labels keeps the bare root (no tag).
    """
    counts = Counter(label for item_labels in labels for label in set(item_labels))
    return [
        (root, *sorted(set(item_labels), key=lambda label: (-counts[label], label))) for item_labels in labels
    ]


def auto_min_count(n_items: int) -> int:
    """Items a class needs when the config leaves ``min_tag_count`` open: 30, less in small catalogues
    (one item in 80, at least 2), so that a few hundred items still get classes to learn."""
    return min(30, max(2, n_items // 80))


@dataclass(frozen=True)
class TagVocabulary:
    """Per-level class names; in every level index 0 is ``<unknown>`` and index 1 is ``<other>``."""

    levels: list[list[str]]
    min_count: int

    @classmethod
    def build(cls, paths: Sequence[Sequence[str]], n_levels: int = 3, min_count: int = 30) -> TagVocabulary:
        """Count items per prefix path and keep, per level, the classes with at least ``min_count`` items."""
        if n_levels < 1:
            raise ConfigError(f"tag_levels must be at least 1, got {n_levels}")
        if min_count < 1:
            raise ConfigError(f"min_tag_count must be at least 1, got {min_count}")
        counts: list[Counter[str]] = [Counter() for _ in range(n_levels)]
        for path in paths:
            for level, key in enumerate(level_keys(path, n_levels)):
                if key is not None:
                    counts[level][key] += 1
        levels = [
            [UNKNOWN, OTHER, *sorted(key for key, n in level_counts.items() if n >= min_count)]
            for level_counts in counts
        ]
        return cls(levels=levels, min_count=min_count)

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def classes_per_level(self) -> list[int]:
        """Number of classes in each level, ``<unknown>`` and ``<other>`` included."""
        return [len(names) for names in self.levels]

    def display(self, level: int, tag_id: int) -> str:
        """The short, human name of a class: the last component of its prefix path."""
        return self.levels[level][tag_id].rsplit(SEPARATOR, 1)[-1]

    def encode(self, category_path: Sequence[str]) -> list[int]:
        """Tag id per level for one category path (root first)."""
        ids = []
        for level, key in enumerate(level_keys(category_path, self.n_levels)):
            if key is None:
                ids.append(UNKNOWN_ID)
            else:
                ids.append(self._index[level].get(key, OTHER_ID))
        return ids

    def encode_all(self, paths: Sequence[Sequence[str]]) -> np.ndarray:
        """Tag ids of many items as an int64 array."""
        ids = np.zeros((len(paths), self.n_levels), dtype=np.int64)  # (n_items, n_levels)
        for row, path in enumerate(paths):
            ids[row] = self.encode(path)
        return ids

    @cached_property
    def _index(self) -> list[dict[str, int]]:
        return [{name: i for i, name in enumerate(names)} for names in self.levels]

    def to_json(self) -> dict[str, object]:
        return {"levels": self.levels, "min_count": self.min_count}

    @classmethod
    def from_json(cls, data: object, where: str) -> TagVocabulary:
        """Rebuild from ``tags.json``; ``where`` names the file in errors."""
        if not isinstance(data, dict) or not isinstance(data.get("levels"), list):
            raise DataError(f"{where}: expected an object with a 'levels' list")
        levels = data["levels"]
        for level, names in enumerate(levels):
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise DataError(f"{where}: levels[{level}] must be a list of strings")
            if names[:2] != [UNKNOWN, OTHER]:
                raise DataError(f"{where}: levels[{level}] must start with {UNKNOWN!r}, {OTHER!r}")
        min_count = data.get("min_count")
        if not isinstance(min_count, int):
            raise DataError(f"{where}: 'min_count' must be an integer")
        return cls(levels=[list(names) for names in levels], min_count=min_count)
