"""Explanations users can trust: no placeholder tags, two clearly named paths with per-level
agreement, and grounding in the user's own history, checked on real bundles through the real app."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from benchmarks.explanations import main as explanations_benchmark
from service.app import create_app
from service.bundle import load_bundle
from service.explanations import (
    catalogue_classes,
    ground,
    read_tag_paths,
    with_agreement,
)
from service.recommender import Query, Recommender
from tests.service.conftest import RedisTarget, settings_for
from tests.training.export.tiny_run import TinyRun
from training.demo import PLACEHOLDERS, count_placeholders, print_tour, tour
from training.export.bundle import BundleInputs, CatalogueRow, export_bundle

LEVELS = [
    ["<unknown>", "<other>", "Skin Care", "Makeup"],
    ["<unknown>", "<other>", "Skin Care > Face", "Makeup > Eyes"],
    ["<unknown>", "<other>", "Skin Care > Face > Serums"],
]


def _probs(*rows: list[list[float]]) -> list[np.ndarray]:
    """Per-item, per-level probabilities -> per-level (N, C_l) arrays."""
    return [np.array([row[level] for row in rows], dtype=np.float32) for level in range(len(LEVELS))]


def test_tag_path_stops_at_the_deepest_informative_level() -> None:
    paths = read_tag_paths(
        _probs(
            [[0, 0.1, 0.8, 0.1], [0, 0.2, 0.7, 0.1], [0, 0.4, 0.6]],  # a full, real path
            [[0, 0.1, 0.8, 0.1], [0, 0.5, 0.3, 0.2], [0, 0.4, 0.6]],  # level 2 is <other>: stop
            [[0, 0.1, 0.8, 0.1], [0, 0.1, 0.3, 0.6], [0, 0.4, 0.6]],  # "Makeup > Eyes" under "Skin Care"
            [[0, 0.6, 0.3, 0.1], [0, 0.1, 0.8, 0.1], [0, 0.4, 0.6]],  # nothing named at level 1
            [[0.9, 0.05, 0.05, 0], [0, 0.1, 0.8, 0.1], [0, 0.4, 0.6]],  # <unknown> (never trained to win)
        ),
        LEVELS,
    )
    assert [[t.path for t in p] for p in paths] == [
        ["Skin Care", "Skin Care > Face", "Skin Care > Face > Serums"],
        ["Skin Care"],
        ["Skin Care"],
        [],
        [],
    ]
    assert [t.tag for t in paths[0]] == ["Skin Care", "Face", "Serums"]
    assert [round(t.confidence, 6) for t in paths[0]] == [0.8, 0.7, 0.6]  # the head's own probability
    assert [t.class_id for t in paths[0]] == [2, 2, 2]


def test_each_tag_says_whether_the_catalogue_agrees() -> None:
    category_paths = [
        ["Beauty", "Skin Care", "Face", "Serums"],  # every level named, and the same
        ["Beauty", "Makeup", "Eyes"],  # level 1 differs, level 2 names another class, 3 not reached
        ["Beauty", "Skin Care", "Neck", "Cream"],  # level 2 is a rare class (<other>): not "Face"
        ["Beauty"],  # the catalogue names nothing below the root
    ]
    classes = catalogue_classes(category_paths, LEVELS)
    assert classes.tolist() == [[2, 2, 2], [3, 3, 0], [2, 1, 1], [0, 0, 0]]
    full = [[0, 0.1, 0.8, 0.1], [0, 0.2, 0.7, 0.1], [0, 0.4, 0.6]]
    paths = with_agreement(read_tag_paths(_probs(full, full, full, full), LEVELS), classes)
    assert [[t.matches_category for t in p] for p in paths] == [
        [True, True, True],
        [False, False, None],
        [True, False, False],
        [None, None, None],
    ]


def test_catalogue_classes_are_the_ones_training_derived(tiny_run: TinyRun) -> None:
    dataset = tiny_run.dataset
    paths = [list(item.category_path) for item in dataset.items]
    assert (catalogue_classes(paths, dataset.tags.levels) == dataset.tag_ids).all()


def _brute_force(sids: np.ndarray, history: list[int], item: int) -> tuple[int, list[int]]:
    """Longest shared ID prefix with any history item, and those items, most recent first, once."""
    best, rows = 0, []
    for row in reversed(history):
        shared = 0
        while shared < sids.shape[1] and sids[row, shared] == sids[item, shared]:
            shared += 1
        if shared > best:
            best, rows = shared, [row]
        elif shared == best and shared > 0 and row not in rows:
            rows.append(row)
    return best, rows


def test_grounding_matches_a_brute_force_computation(tiny_run: TinyRun) -> None:
    sids = tiny_run.sids
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(200):
        # half the histories come from one first code, so long shared prefixes and ties are common
        pool = np.flatnonzero(sids[:, 0] == sids[trial % len(sids), 0]) if trial % 2 else np.arange(len(sids))
        history = rng.choice(pool, size=int(rng.integers(0, 15))).tolist()
        items = rng.choice(len(sids), size=10, replace=False).tolist()
        for item, found in zip(items, ground(sids, history, items), strict=True):
            assert (found.shared_levels, found.history) == _brute_force(sids, history, item)
            checked += found.shared_levels >= 2
    assert checked > 50  # the deep cases were exercised, not only "no shared code"


def test_openapi_names_the_two_paths(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for name in ("RecommendedItem", "ItemInfo"):
        fields = schemas[name]["properties"]
        assert "truth" in fields["category_path"]["description"]
        assert "why the model" in fields["tag_path"]["description"]
    assert "matches_category" in schemas["TagOut"]["properties"]
    assert "grounding" in schemas["RecommendRequest"]["properties"]


# ------------------------------------------------- a bundle whose tag heads do predict <other>
@pytest.fixture(scope="module")
def placeholder_bundle(tiny_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run with its tag heads biased towards ``<other>``: for a fifth of the IDs at level 1
    and half at level 2, so that the raw heads would show placeholders. Every graph is real."""
    tokenizer = copy.deepcopy(tiny_run.tokenizer)
    with torch.no_grad():
        logits = tokenizer.tag_logits_from_codes(torch.from_numpy(tiny_run.sids[:, :2]))
        for level, share in ((0, 0.2), (1, 0.5)):
            gap = logits[level][:, 2:].max(dim=1).values - logits[level][:, 1]  # best real class - <other>
            last = tokenizer.tag_heads[level].net[-1]  # type: ignore[index]
            assert isinstance(last, torch.nn.Linear)  # its output 0 is class 1, <other> (TagHead)
            last.bias[0] += torch.quantile(gap, share) + 1e-3
    dataset = tiny_run.dataset
    out = tmp_path_factory.mktemp("placeholder") / "bundle"
    export_bundle(
        BundleInputs(
            catalogue=[
                CatalogueRow(item.item_id, item.title, list(item.category_path), dataset.tag_ids[i].tolist())
                for i, item in enumerate(dataset.items)
            ],
            tag_levels=dataset.tags.levels,
            sids=tiny_run.sids,
            tokenizer=tokenizer,
            embedding_dim=tiny_run.embeddings.shape[1],
            generator=tiny_run.generator,
            configs={"note": "tests/service/test_explanations.py: tag heads biased towards <other>"},
            metrics={"note": "not a quality measurement"},
        ),
        out,
    )
    return out


@pytest.fixture
def placeholder_client(placeholder_bundle: Path, redis_target: RedisTarget) -> Iterator[TestClient]:
    settings = settings_for(
        placeholder_bundle, redis_url=redis_target.url, redis_key_prefix=redis_target.prefix
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _catalogue_rows(tiny_run: TinyRun) -> list[dict]:
    return [json.loads(line) for line in (tiny_run.bundle / "catalogue.jsonl").read_text().splitlines()]


def _history(tiny_run: TinyRun, user: int) -> list[str]:
    return [tiny_run.dataset.items[i].item_id for i in tiny_run.dataset.split().test_history[user]]


def test_no_placeholder_in_any_answer_of_the_demo_tour(
    placeholder_client: TestClient,
    placeholder_bundle: Path,
    tiny_run: TinyRun,
    capsys: pytest.CaptureFixture[str],
) -> None:
    recommender = Recommender(load_bundle(placeholder_bundle, ["CPUExecutionProvider"], 1))
    levels = recommender.bundle.tag_levels
    raw_placeholders = shown = 0
    for user in range(30):
        answers = tour(placeholder_client, _history(tiny_run, user), k=10)
        assert count_placeholders(answers) == 0
        items = answers["recommend"]["items"]
        codes = np.array([item["codes"] for item in items])
        raw = [p.argmax(axis=1) for p in recommender.tag_probabilities(codes)]  # what the heads say
        raw_placeholders += sum(int((ids <= 1).sum()) for ids in raw)
        for n, item in enumerate(items):
            path = item["tag_path"]
            shown += len(path)
            for level, tag in enumerate(path):  # a real path, each tag the head's own choice
                name = levels[level][raw[level][n]]
                assert name.rsplit(" > ", 1)[-1] == tag["tag"] and name not in PLACEHOLDERS
                assert level == 0 or name.startswith(levels[level - 1][raw[level - 1][n]] + " > ")
            depth = len(path)  # the path stops only where the next level names nothing under it
            if depth < len(raw):
                below = levels[depth][raw[depth][n]]
                assert raw[depth][n] <= 1 or (
                    depth > 0 and not below.startswith(levels[depth - 1][raw[depth - 1][n]])
                )
    assert raw_placeholders > 50 and shown > 100  # the heads did predict <other>; names were still shown
    history = _history(tiny_run, 0)
    print_tour(tour(placeholder_client, history), [(i, i) for i in history])  # the demo's printout
    assert "placeholder tags in the tour's answers: 0" in capsys.readouterr().out


def test_one_item_has_one_explanation_on_every_endpoint(
    placeholder_client: TestClient, tiny_run: TinyRun
) -> None:
    page = placeholder_client.get("/items", params={"limit": 1000}).json()
    listed = {item["item_id"]: item for item in page["items"]}
    assert len(listed) == page["total"] and all(item["tag_path"] is not None for item in listed.values())
    assert any(item["tag_path"] for item in listed.values())
    rows = {
        row["item_id"]: row
        for row in map(json.loads, (tiny_run.bundle / "catalogue.jsonl").read_text().splitlines())
    }
    for user in range(10):
        body = {"history": _history(tiny_run, user), "k": 10}
        for item in placeholder_client.post("/recommend", json=body).json()["items"]:
            assert item["tag_path"] == listed[item["item_id"]]["tag_path"]
            assert item["tag_path"] == placeholder_client.get(f"/items/{item['item_id']}").json()["tag_path"]
            truth, category = rows[item["item_id"]]["tags"], item["category_path"]
            for level, tag in enumerate(item["tag_path"]):
                shown = [t["tag"] for t in item["tag_path"][: level + 1]]
                expected = (
                    None if truth[level] == 0 else truth[level] != 1 and shown == category[1 : level + 2]
                )
                assert tag["matches_category"] is expected


def test_grounding_over_http_matches_a_brute_force_computation(client: TestClient, tiny_run: TinyRun) -> None:
    rows = {
        row["item_id"]: row
        for row in map(json.loads, (tiny_run.bundle / "catalogue.jsonl").read_text().splitlines())
    }
    position = {item_id: row["index"] for item_id, row in rows.items()}
    history_length = client.get("/v1/model").json()["decoding"]["history_length"]
    sids = tiny_run.sids
    grounded = 0
    for user in range(25):
        history = _history(tiny_run, user)
        body = {"history": history, "k": 10, "grounding": True, "exclude_seen": user % 2 == 0}
        answer = client.post("/recommend", json=body).json()
        read = [position[i] for i in history][-history_length:]  # the history the model read
        for item in answer["items"]:
            shared, expected = _brute_force(sids, read, position[item["item_id"]])
            got = item["grounding"]
            assert got["shared_levels"] == shared
            assert [h["item_id"] for h in got["history"]] == [
                tiny_run.dataset.items[r].item_id for r in expected
            ]
            assert got["tag_path"] == [t["tag"] for t in item["tag_path"][:shared]]
            for h in got["history"]:  # the shared prefix stands for the same tags in the history item
                theirs = client.get(f"/items/{h['item_id']}").json()["tag_path"]
                assert [t["tag"] for t in theirs[: len(got["tag_path"])]] == got["tag_path"]
            grounded += bool(got["history"])
    assert grounded > 50
    plain = client.post("/recommend", json={"history": _history(tiny_run, 0), "k": 3}).json()
    assert all(item["grounding"] is None for item in plain["items"])


def test_grounding_is_computed_from_the_recommender_rows(tiny_run: TinyRun) -> None:
    recommender = Recommender(load_bundle(tiny_run.bundle, ["CPUExecutionProvider"], 1))
    history = tiny_run.dataset.split().test_history[3].tolist()
    (hits,) = recommender.recommend([Query(history=history, k=10, beam=10, grounding=True)])
    found = ground(recommender.snapshot.sids, history, [h.item for h in hits])
    assert [f.shared_levels for f in found] == [_brute_force(tiny_run.sids, history, h.item)[0] for h in hits]


def test_explanations_benchmark_on_a_tiny_bundle(
    placeholder_bundle: Path, tiny_run: TinyRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    tiny_run.dataset.save(data)
    out = tmp_path / "explanations.json"
    argv = ["--bundle", str(placeholder_bundle), "--data", str(data), "--out", str(out), "--users", "150"]
    assert explanations_benchmark(argv) == 0
    report = json.loads(out.read_text())
    assert report["command"] == "python -m benchmarks.explanations " + " ".join(argv)
    assert out.with_suffix(".png").stat().st_size > 0 and "fidelity" in capsys.readouterr().out
    assert report["placeholder_tags"] == 0 and report["placeholder_tags_raw_heads"] > 50
    assert report["recommendations"] == 1500 and len(report["fidelity"]) == len(report["ece"]) == 2

    # the same figures, computed another way: from the explanations' own matches_category flags
    recommender = Recommender(load_bundle(placeholder_bundle, ["CPUExecutionProvider"], 1))
    rng = np.random.default_rng(0)
    users = np.sort(rng.choice(len(tiny_run.dataset.user_ids), 150, False))
    history = tiny_run.dataset.split().test_history
    queries = [Query(history=history[u].tolist(), k=10, beam=report["beam"]) for u in users]
    hits = [hit for answer in recommender.recommend(queries) for hit in answer]
    truth = {row["item_id"]: row["tags"] for row in _catalogue_rows(tiny_run)}
    ids = recommender.bundle.catalogue.item_ids
    for level in range(2):
        named = [hit for hit in hits if truth[ids[hit.item]][level] > 1]
        hits_right = [h for h in named if len(h.tag_path) > level and h.tag_path[level].matches_category]
        assert report["fidelity"][level] == pytest.approx(len(hits_right) / len(named))
        shown = [h.tag_path[level] for h in hits if len(h.tag_path) > level]
        assert report["coverage"][level] == pytest.approx(len(shown) / len(hits))
    grounded = [
        bool(g.history)
        for q, a in zip(queries, recommender.recommend(queries), strict=True)
        for g in ground(
            recommender.snapshot.sids, q.history[-recommender.history_length :], [h.item for h in a]
        )
    ]
    assert report["grounded_share"] == pytest.approx(np.mean(grounded))
