"""The serving core's per-row tables hold at any catalogue size: the tag-path filter map, built from
the catalogue's distinct paths, and the explanations, built a slice of the catalogue at a time, are
what a row-by-row construction gives."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

import service.recommender as recommender_module
from service.bundle import load_bundle
from service.recommender import CatalogueSnapshot, Recommender
from tests.training.export.tiny_run import TinyRun


def test_the_filter_map_holds_every_row_under_each_path_prefix() -> None:
    rng = np.random.default_rng(0)
    paths = [
        ["Shop", f"D{rng.integers(3)}", f"C{rng.integers(3)}", f"L{rng.integers(3)}"][: rng.integers(1, 5)]
        for _ in range(400)
    ]
    sids = np.stack([np.arange(400) // 16, np.arange(400) % 16], axis=1)  # unique rows
    snapshot = CatalogueSnapshot.build(sids, 32, paths, [[] for _ in paths])
    expected: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for row, path in enumerate(paths):
        keys = {tuple(path[:n]) for n in range(1, len(path) + 1)}
        keys |= {tuple(path[1:n]) for n in range(2, len(path) + 1)}  # the root may be left out
        for key in keys:
            expected[key].append(row)
    assert snapshot.by_path.keys() == expected.keys()
    for key, rows in expected.items():
        assert snapshot.by_path[key].tolist() == rows, key  # ascending rows


def test_a_catalogue_explained_in_slices_is_explained_as_in_one_call(
    tiny_run: TinyRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = load_bundle(tiny_run.bundle, ["CPUExecutionProvider"], threads=1)
    recommender = Recommender(bundle)
    whole = recommender.snapshot.explanations  # 800 rows: one tag-heads call
    monkeypatch.setattr(recommender_module, "EXPLAIN_ROWS", 97)
    turns: list[int] = []  # a reload's Pace gets a turn after every slice
    sliced = recommender.explain(bundle.sids, bundle.catalogue.category_paths, lambda: turns.append(1))
    assert len(sliced) == len(whole) == bundle.manifest.n_items
    assert len(turns) == -(-bundle.manifest.n_items // 97)
    assert any(whole), "the tiny run's tag heads name some tags"
    for one, other in zip(sliced, whole, strict=True):
        assert [(t.path, t.class_id, t.matches_category) for t in one] == [
            (t.path, t.class_id, t.matches_category) for t in other
        ]
        np.testing.assert_allclose([t.confidence for t in one], [t.confidence for t in other], atol=1e-6)
