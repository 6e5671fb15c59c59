"""The request mix of a load test, and the catalogue every response is checked against.

The catalogue is read from the service itself (``GET /items``), so "the item exists" means exists in
the bundle being served. Histories come from a prepared dataset's test users when one is given (real
lengths and co-occurrences) and are otherwise drawn at random from the catalogue. Users for
``user``-kind requests get fresh ids under ``loadtest:<run>:`` and are seeded through ``POST /events``
before the first step, so the harness knows exactly which history the service holds for each of them
and can check ``exclude_seen``. Event requests go to a separate pool of users, so they never change
the histories that recommendations are checked against.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from deploy.loadtest.config import LoadTestConfig
from deploy.loadtest.errors import ConfigError, DataError

__all__ = ["Catalogue", "PlannedRequest", "Workload", "dataset_histories", "random_histories"]

#: Items per ``GET /items`` page while reading the catalogue.
PAGE_SIZE = 500
#: Depths of the tag-path filters the mix uses (below the root of the category path).
FILTER_DEPTHS = (1, 2)


@dataclass(frozen=True)
class Catalogue:
    """Item id -> category path (root first), as the service lists it."""

    paths: dict[str, tuple[str, ...]]

    @classmethod
    async def fetch(cls, client: aiohttp.ClientSession) -> Catalogue:
        """Page through ``GET /items`` until a short page; a malformed page names the offset."""
        paths: dict[str, tuple[str, ...]] = {}
        offset = 0
        while True:
            async with client.get("/items", params={"limit": PAGE_SIZE, "offset": offset}) as response:
                text = await response.text()
            if response.status != 200:
                raise DataError(f"GET /items?offset={offset}: HTTP {response.status}: {text[:200]}")
            rows = json.loads(text).get("items")
            if not isinstance(rows, list):
                raise DataError(f"GET /items?offset={offset}: expected {{'items': [...]}}")
            for row in rows:
                paths[str(row["item_id"])] = tuple(row.get("category_path") or ())
            if len(rows) < PAGE_SIZE:
                break
            offset += len(rows)
        if not paths:
            raise DataError("GET /items: the service lists an empty catalogue")
        return cls(paths)

    def matches(self, item_id: str, tag_path: Sequence[str]) -> bool:
        """Whether an item's category path starts with ``tag_path``, written with or without the root."""
        path, wanted = self.paths[item_id], tuple(tag_path)
        return path[: len(wanted)] == wanted or path[1 : 1 + len(wanted)] == wanted

    def common_filters(self, min_items: int) -> list[tuple[str, ...]]:
        """Tag paths (depths ``FILTER_DEPTHS``) shared by at least ``min_items`` catalogue items.

        Rare categories are left out: the tokenizer merges them into ``<other>``, and a filter that
        leaves fewer than ``k`` items would only measure an edge case.
        """
        counts = Counter(
            tuple(path[1 : 1 + depth])
            for path in self.paths.values()
            for depth in FILTER_DEPTHS
            if len(path) > depth
        )
        return sorted(prefix for prefix, count in counts.items() if count >= min_items)


@dataclass(frozen=True)
class PlannedRequest:
    """One request of the mix and what its response must satisfy."""

    kind: str
    path: str
    body: dict[str, Any]
    excluded: frozenset[str] = frozenset()  # items the response must not contain
    tag_path: tuple[str, ...] | None = None  # every returned item must lie under it


def dataset_histories(data_dir: Path, n_users: int, max_history: int, rng: random.Random) -> list[list[str]]:
    """Test-user histories (all but the last item, most recent ``max_history`` kept) as item ids, read
    from a prepared dataset's ``items.jsonl`` and ``sequences.jsonl`` (docs/CONTRACTS.md §1)."""
    try:
        with (data_dir / "items.jsonl").open(encoding="utf-8") as handle:
            item_ids = {int(row["index"]): str(row["item_id"]) for row in map(json.loads, handle)}
        with (data_dir / "sequences.jsonl").open(encoding="utf-8") as handle:
            sequences = [[item_ids[int(i)] for i in json.loads(line)["items"]] for line in handle]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{data_dir}: not a prepared dataset (python -m training prepare): {exc!r}") from exc
    users = rng.sample(range(len(sequences)), min(n_users, len(sequences)))
    return [sequences[u][:-1][-max_history:] for u in users]


class Workload:
    """Draws requests of the configured mix; ``seed_events`` must be sent before any ``user`` request."""

    def __init__(
        self, config: LoadTestConfig, catalogue: Catalogue, histories: list[list[str]], run_tag: str
    ) -> None:
        unknown = sorted({item for history in histories for item in history} - catalogue.paths.keys())
        if unknown:
            raise DataError(
                f"{len(unknown)} history items are not in the served catalogue (first: {unknown[0]!r}); "
                "does --data match the bundle?"
            )
        self.config = config
        self.catalogue = catalogue
        self.item_ids = sorted(catalogue.paths)
        self.histories = [history for history in histories if history]
        self.filters = catalogue.common_filters(min_items=max(2 * config.k, 20))
        if config.mix.get("filtered", 0) > 0 and not self.filters:
            raise ConfigError(
                "mix: 'filtered' requests need categories with enough items; the catalogue has none"
            )
        self.users = {f"loadtest:{run_tag}:u{i}": history for i, history in enumerate(self.histories)}
        self.event_users = [f"loadtest:{run_tag}:e{i}" for i in range(len(self.histories))]
        self._kinds = [kind for kind, weight in config.mix.items() if weight > 0]
        self._weights = [config.mix[kind] for kind in self._kinds]

    def seed_events(self) -> list[PlannedRequest]:
        """The ``POST /events`` that give each ``user``-kind user its history, oldest item first."""
        return (
            [self._event(user, item) for user, history in self.users.items() for item in history]
            if self.config.mix.get("user", 0) > 0
            else []
        )

    def draw(self, rng: random.Random) -> PlannedRequest:
        """One request of the mix."""
        kind = rng.choices(self._kinds, self._weights)[0]
        if kind == "event":
            return self._event(rng.choice(self.event_users), rng.choice(self.item_ids))
        body: dict[str, Any] = {"k": self.config.k, "exclude_seen": True, "explain": True}
        if self.config.beam is not None:
            body["beam"] = self.config.beam
        if kind == "user":
            user, history = rng.choice(list(self.users.items()))
            return PlannedRequest(kind, "/recommend", {**body, "user_id": user}, frozenset(history))
        history = rng.choice(self.histories)
        body["history"] = history
        if kind == "history":
            return PlannedRequest(kind, "/recommend", body, frozenset(history))
        tag_path = rng.choice(self.filters)
        body["filter"] = {"tag_path": list(tag_path)}
        return PlannedRequest(kind, "/recommend", body, frozenset(history), tag_path)

    @staticmethod
    def _event(user: str, item: str) -> PlannedRequest:
        return PlannedRequest("event", "/events", {"user_id": user, "item_id": item})


def random_histories(
    catalogue: Catalogue, n_users: int, max_history: int, rng: random.Random
) -> list[list[str]]:
    """Histories of 3..max_history distinct random catalogue items (when no dataset is given)."""
    item_ids = sorted(catalogue.paths)
    longest = min(max_history, len(item_ids))
    return [rng.sample(item_ids, rng.randint(min(3, longest), longest)) for _ in range(n_users)]
