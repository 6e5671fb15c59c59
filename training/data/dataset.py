"""The canonical dataset every later stage reads (docs/CONTRACTS.md §1).

One object holds the item table (dense index = row), the users' chronological sequences, the tag
vocabulary and each item's tag ids. It is saved as plain JSONL/JSON so it can be read without this code,
and it derives the leave-one-out split, item popularity and the head/tail split the same way for every
stage, so that the tokenizer, the generator and the evaluation can never disagree about them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from training.data.files import field, parse_json_line, read_lines
from training.data.tags import TagVocabulary
from training.errors import DataError

__all__ = ["TAIL_FRACTION", "Dataset", "Item", "Split"]

#: Share of the catalogue, least popular first, that counts as the "tail" in head/tail reports.
TAIL_FRACTION = 0.8


@dataclass(frozen=True)
class Item:
    """One catalogue row. ``category_path`` is root first; missing text fields are None."""

    item_id: str
    title: str
    brand: str | None = None
    description: str | None = None
    category_path: tuple[str, ...] = ()

    def text(self) -> str:
        """What the text encoder sees: title, brand and description, never the category path.

        The category path is the tags' supervision, so letting it into the embedding would leak the
        labels. An item with no text at all falls back to its id, so that encoders always get a token.
        """
        parts = [part for part in (self.title, self.brand, self.description) if part]
        return " ".join(parts) if parts else f"item {self.item_id}"


@dataclass(frozen=True)
class Split:
    """Leave-one-out split, one entry per user (same order as ``Dataset.user_ids``).

    ``train[u]`` is the sequence without its last two items; validation predicts the second-to-last item
    from everything before it, test predicts the last item from everything before it.
    """

    train: list[np.ndarray]
    valid_history: list[np.ndarray]
    valid_target: np.ndarray
    test_history: list[np.ndarray]
    test_target: np.ndarray


@dataclass(eq=False)
class Dataset:
    """Items, tags and chronological user sequences of dense item indices (oldest first)."""

    items: list[Item]
    user_ids: list[str]
    sequences: list[np.ndarray]
    timestamps: list[np.ndarray]
    tags: TagVocabulary

    def __post_init__(self) -> None:
        if len(self.user_ids) != len(self.sequences) or len(self.sequences) != len(self.timestamps):
            raise DataError("user_ids, sequences and timestamps must have one entry per user")
        for user, sequence, times in zip(self.user_ids, self.sequences, self.timestamps, strict=True):
            if len(sequence) == 0:
                raise DataError(f"user {user!r} has no interactions")
            if len(times) != len(sequence):
                raise DataError(f"user {user!r}: {len(sequence)} items but {len(times)} timestamps")
            if sequence.min() < 0 or sequence.max() >= len(self.items):
                raise DataError(f"user {user!r}: item index out of range 0..{len(self.items) - 1}")

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    @cached_property
    def tag_ids(self) -> np.ndarray:
        """Tag id per item and level, int64 (n_items, n_levels)."""
        return self.tags.encode_all([item.category_path for item in self.items])

    def item_texts(self) -> list[str]:
        """Encoder input per item (see ``Item.text``)."""
        return [item.text() for item in self.items]

    def split(self) -> Split:
        """Leave-one-out split; every user needs at least three interactions."""
        return self._split

    @cached_property
    def _split(self) -> Split:
        short = [u for u, s in zip(self.user_ids, self.sequences, strict=True) if len(s) < 3]
        if short:
            raise DataError(
                f"{len(short)} users have fewer than 3 interactions (first: {short[0]!r}); "
                "leave-one-out needs train/valid/test items (prepare drops them with --min-user-items 3)"
            )
        return Split(
            train=[s[:-2] for s in self.sequences],
            valid_history=[s[:-2] for s in self.sequences],
            valid_target=np.array([s[-2] for s in self.sequences], dtype=np.int64),
            test_history=[s[:-1] for s in self.sequences],
            test_target=np.array([s[-1] for s in self.sequences], dtype=np.int64),
        )

    @cached_property
    def popularity(self) -> np.ndarray:
        """Training interactions per item, int64 (n_items,)."""
        train = self.split().train
        flat = np.concatenate(train) if train else np.zeros(0, dtype=np.int64)
        return np.bincount(flat, minlength=self.n_items).astype(np.int64)

    @cached_property
    def tail_mask(self) -> np.ndarray:
        """True for the ``TAIL_FRACTION`` least popular items; ties go to the lower index first."""
        order = np.argsort(self.popularity, kind="stable")
        mask = np.zeros(self.n_items, dtype=bool)
        mask[order[: round(TAIL_FRACTION * self.n_items)]] = True
        return mask

    def stats(self) -> dict[str, Any]:
        """Summary numbers written to ``stats.json`` and printed by ``prepare``."""
        lengths = np.array([len(s) for s in self.sequences])
        split = self.split()
        tail = self.tail_mask
        train_total = max(int(self.popularity.sum()), 1)
        tag_ids = self.tag_ids
        return {
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "avg_seq_len": round(float(lengths.mean()), 4),
            "min_seq_len": int(lengths.min()),
            "max_seq_len": int(lengths.max()),
            "density": round(self.n_interactions / (self.n_users * self.n_items), 8),
            "tag_levels": self.tags.n_levels,
            "tag_min_count": self.tags.min_count,
            "tag_classes_per_level": self.tags.classes_per_level,
            "tag_unknown_fraction_per_level": [
                round(float((tag_ids[:, lvl] == 0).mean()), 4) for lvl in range(self.tags.n_levels)
            ],
            "tag_other_fraction_per_level": [
                round(float((tag_ids[:, lvl] == 1).mean()), 4) for lvl in range(self.tags.n_levels)
            ],
            "tail_fraction": round(float(tail.mean()), 4),
            "tail_train_interaction_share": round(float(self.popularity[tail].sum()) / train_total, 4),
            "tail_test_target_share": round(float(tail[split.test_target].mean()), 4),
        }

    # ------------------------------------------------------------------ disk format

    def save(self, out_dir: Path, extra_stats: dict[str, Any] | None = None) -> None:
        """Write items.jsonl, sequences.jsonl, tags.json and stats.json (+ ``extra_stats``)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        tag_ids = self.tag_ids
        with (out_dir / "items.jsonl").open("w", encoding="utf-8") as f:
            for index, item in enumerate(self.items):
                row = {
                    "item_id": item.item_id,
                    "index": index,
                    "title": item.title,
                    "brand": item.brand,
                    "description": item.description,
                    "category_path": list(item.category_path),
                    "tags": tag_ids[index].tolist(),
                }
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        with (out_dir / "sequences.jsonl").open("w", encoding="utf-8") as f:
            for user, sequence, times in zip(self.user_ids, self.sequences, self.timestamps, strict=True):
                row = {"user_id": user, "items": sequence.tolist(), "timestamps": times.tolist()}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        (out_dir / "tags.json").write_text(json.dumps(self.tags.to_json(), ensure_ascii=False, indent=1))
        stats = {**self.stats(), **(extra_stats or {})}
        (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")

    @classmethod
    def load(cls, data_dir: Path) -> Dataset:
        """Read a dataset written by ``save``; malformed files raise DataError naming file and line."""
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise DataError(f"dataset folder {data_dir} does not exist (run `python -m training prepare`)")
        tags_path = data_dir / "tags.json"
        if not tags_path.is_file():
            raise DataError(f"{tags_path} does not exist")
        try:
            tags_json = json.loads(tags_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{tags_path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
        tags = TagVocabulary.from_json(tags_json, str(tags_path))

        items: list[Item] = []
        items_path = data_dir / "items.jsonl"
        for line_no, line in read_lines(items_path):
            row = parse_json_line(items_path, line_no, line)
            where = f"{items_path}:{line_no}"
            if row.get("index") != len(items):
                raise DataError(f"{where}: 'index' is {row.get('index')!r}, expected {len(items)}")
            item = Item(
                item_id=field(row, "item_id", str, where),
                title=field(row, "title", str, where),
                brand=field(row, "brand", str | None, where),
                description=field(row, "description", str | None, where),
                category_path=tuple(field(row, "category_path", list, where)),
            )
            if row.get("tags") != tags.encode(item.category_path):
                raise DataError(f"{where}: 'tags' do not match tags.json for this category path")
            items.append(item)

        user_ids: list[str] = []
        sequences: list[np.ndarray] = []
        timestamps: list[np.ndarray] = []
        sequences_path = data_dir / "sequences.jsonl"
        for line_no, line in read_lines(sequences_path):
            row = parse_json_line(sequences_path, line_no, line)
            where = f"{sequences_path}:{line_no}"
            sequence = _int_array(row, "items", where)  # (L,)
            times = _int_array(row, "timestamps", where)  # (L,)
            if len(sequence) == 0:
                raise DataError(f"{where}: user has no interactions")
            if len(times) != len(sequence) or sequence.min() < 0 or sequence.max() >= len(items):
                raise DataError(f"{where}: items must be indices 0..{len(items) - 1}, one timestamp each")
            user_ids.append(field(row, "user_id", str, where))
            sequences.append(sequence)
            timestamps.append(times)
        return cls(items=items, user_ids=user_ids, sequences=sequences, timestamps=timestamps, tags=tags)


def _int_array(row: dict[str, Any], name: str, where: str) -> np.ndarray:
    try:
        return np.asarray(field(row, name, list, where), dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{where}: field {name!r} must be a list of integers") from None
