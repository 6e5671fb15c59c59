"""Correctness of every ``/recommend`` response, checked while the load is on.

A fast wrong answer is not capacity: a step counts toward the verdict only if every response is a
valid recommendation. Each check returns the problems it found as short strings (empty = valid), so
the report can show the first few verbatim.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from deploy.loadtest.workload import Catalogue, PlannedRequest

__all__ = ["check_recommendation"]


def check_recommendation(request: PlannedRequest, payload: Any, catalogue: Catalogue, k: int) -> list[str]:
    """Problems of one 200 response to ``request``: catalogue, uniqueness, exclusions, filter, order."""
    if not isinstance(payload, dict):
        return ["response is not a JSON object"]
    problems = []
    if not isinstance(payload.get("bundle_id"), str) or not payload["bundle_id"]:
        problems.append("bundle_id missing")
    items = payload.get("items")
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        return [*problems, "items is not a list of objects"]
    if not 1 <= len(items) <= k:
        problems.append(f"{len(items)} items returned, expected 1..{k}")
    ids = [str(item.get("item_id")) for item in items]
    for item_id in ids:
        if item_id not in catalogue.paths:
            problems.append(f"unknown item {item_id!r}")
        elif item_id in request.excluded:
            problems.append(f"item {item_id!r} is in the history (exclude_seen)")
        elif request.tag_path is not None and not catalogue.matches(item_id, request.tag_path):
            problems.append(f"item {item_id!r} lies outside the filter {list(request.tag_path)}")
    if len(set(ids)) != len(ids):
        problems.append("duplicate items")
    scores = [item.get("score") for item in items]
    if not all(isinstance(score, int | float) for score in scores):
        problems.append("an item has no numeric score")
    elif any(later > earlier for earlier, later in pairwise(scores)):
        problems.append("items are not sorted by score")
    return problems
