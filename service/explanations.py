"""What an explanation says, read from the tag heads and the semantic-ID table (numpy only).

Every item carries two paths, and they mean different things:

- ``category_path``: the catalogue's own path, root first. It is the item's truth and never changes.
- ``tag_path``: the *generated* path: what the tag heads read from the item's semantic ID. It says why
  the model went there (the ID's code prefixes stand for these tags), so it can disagree with the
  catalogue; each level says whether it does (``matches_category``).

**No placeholders.** The tag vocabularies keep two internal classes per level: ``<unknown>`` (the
catalogue path does not reach the level) and ``<other>`` (classes too rare to have a name of their
own). Neither is a tag a user can read, so a generated path *stops at the deepest informative level*:
level ``l`` shows the head's most likely class, and the path ends at the first level whose most likely
class is ``<unknown>`` or ``<other>``, or is not a child of the tag shown above it (the heads read each
level separately, so "Makeup" over "Skin Care > Face" can happen). Every tag shown is a real class of
the catalogue's taxonomy, the path is a real path, and each confidence is the probability the head
gives the tag shown. The same rule serves ``/recommend``, ``/items`` and ``/items/{id}``: a row's path
is computed once per catalogue snapshot.

**Grounding.** A recommended item's ID shares a prefix with some history items; the longest such
prefix, the history items that have it and the tags that prefix stands for ("because you bought X
and Y in Skin Care > Face") come from the ID table alone: no model call. The level-``l`` tag head reads
codes ``0..l``, so a shared prefix of ``m`` codes fixes the generated tags of levels ``0..m-1``.

Calibrating the tag heads' confidences is offline work (``training.evaluate.calibration``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "OTHER",
    "SEPARATOR",
    "UNKNOWN",
    "Grounding",
    "TagScore",
    "catalogue_classes",
    "ground",
    "is_placeholder",
    "read_tag_paths",
    "with_agreement",
]

#: the internal classes of every tag level (``training.data.tags``: index 0 and 1 of each level)
UNKNOWN, OTHER = "<unknown>", "<other>"
UNKNOWN_ID, OTHER_ID = 0, 1
SEPARATOR = " > "


@dataclass(frozen=True, slots=True)
class TagScore:
    """One level of a generated tag path (a few per catalogue row, all held in memory: slots)."""

    tag: str  # the class's own name, e.g. "Face"
    confidence: float  # the head's probability of this class
    path: str = ""  # the class's full name, e.g. "Skin Care > Face"
    class_id: int = -1  # the class's index in its level's vocabulary
    matches_category: bool | None = None  # vs the catalogue's class; None: the catalogue stops above


@dataclass(frozen=True)
class Grounding:
    """History items behind a recommendation: those sharing its longest semantic-ID prefix."""

    shared_levels: int  # codes shared with the closest history items; 0 = no history item shares one
    history: list[int]  # their catalogue rows, most recent first, each once (empty when shared_levels = 0)


def is_placeholder(tag: str) -> bool:
    return tag in (UNKNOWN, OTHER)


def read_tag_paths(probs: Sequence[np.ndarray], levels: Sequence[Sequence[str]]) -> list[list[TagScore]]:
    """Per-level head probabilities ``[(N, C_l)]`` -> each item's generated path (see the module doc).

    ``levels[l]`` are the level's class names (full prefix paths, ``<unknown>`` and ``<other>`` first).
    """
    if not probs:
        return []
    best = [p.argmax(axis=1).tolist() for p in probs]  # per level: (N,)
    confidence = [p.max(axis=1).tolist() for p in probs]
    own_names = [[name.rsplit(SEPARATOR, 1)[-1] for name in names] for names in levels]  # one str each
    paths = []
    for n in range(probs[0].shape[0]):
        path: list[TagScore] = []
        for level in range(len(probs)):
            class_id = best[level][n]
            name = levels[level][class_id]
            if class_id in (UNKNOWN_ID, OTHER_ID) or is_placeholder(name):
                break
            if path and not name.startswith(path[-1].path + SEPARATOR):
                break  # not a child of the tag above: the path would not be a real one
            path.append(TagScore(own_names[level][class_id], confidence[level][n], name, class_id))
        paths.append(path)
    return paths


def catalogue_classes(category_paths: Sequence[Sequence[str]], levels: Sequence[Sequence[str]]) -> np.ndarray:
    """The catalogue's class per level, int64 ``(N, n_levels)``, as training derived it
    (``training.data.tags.TagVocabulary.encode``): level ``l`` is the path below the root up to its
    ``l``-th component; ``<unknown>`` where the path is too short, ``<other>`` where the class is rare."""
    index = [{name: i for i, name in enumerate(names)} for names in levels]
    out = np.zeros((len(category_paths), len(levels)), dtype=np.int64)  # (N, n_levels), 0 = unknown
    for row, path in enumerate(category_paths):
        below_root = list(path[1:])
        for level in range(min(len(levels), len(below_root))):
            out[row, level] = index[level].get(SEPARATOR.join(below_root[: level + 1]), OTHER_ID)
    return out


def with_agreement(paths: list[list[TagScore]], classes: np.ndarray) -> list[list[TagScore]]:
    """Mark each generated tag against the catalogue's class of its level (``classes`` (N, n_levels)):
    True where equal, False where the catalogue names another class (a rare one included), None where
    the catalogue path does not reach the level."""
    known = classes.tolist()  # (N, n_levels) as lists: read per tag, far faster than numpy scalars
    return [
        [
            TagScore(
                tag.tag,
                tag.confidence,
                tag.path,
                tag.class_id,
                None if known[row][level] == UNKNOWN_ID else known[row][level] == tag.class_id,
            )
            for level, tag in enumerate(path)
        ]
        for row, path in enumerate(paths)
    ]


def ground(sids: np.ndarray, history: Sequence[int], items: Sequence[int]) -> list[Grounding]:
    """For each recommended row in ``items``, the history rows sharing its longest ID prefix.

    ``sids`` int64 (n_items, D) is the snapshot's ID table; ``history`` rows oldest first (repeats
    allowed). One vectorised comparison of the ``k`` recommended IDs with the ``H`` history IDs.
    """
    distinct = list(dict.fromkeys(reversed(history)))  # most recent first, each once
    if not distinct or not items:
        return [Grounding(0, []) for _ in items]
    rows = np.asarray(distinct, dtype=np.int64)  # (H,)
    same = sids[np.asarray(items, dtype=np.int64)][:, None, :] == sids[rows][None, :, :]  # (k, H, D)
    shared = np.cumprod(same, axis=2).sum(axis=2)  # (k, H) common prefix length
    longest = shared.max(axis=1)  # (k,)
    return [
        Grounding(int(m), rows[shared[j] == m].tolist() if m > 0 else [])
        for j, m in enumerate(longest.tolist())
    ]
