"""Any dataset with default settings: files in every format the readers accept, written here, go
through ``python -m training pipeline`` with no flag to a bundle that the real app serves, with a tag
path as deep as the data's hierarchy allows.

Each catalogue is tiny (120-150 items) so that each pipeline stays within a minute or two on 2 cores;
the shapes are the real ones: u.item's 19 genre flags and several genres per film (MovieLens 100K),
``::``-separated ratings and ``|``-joined genres (1M), Yelp's comma-separated and missing categories
and repeated reviews, the raw Amazon 2014 dump (gzipped review JSON, Python-literal meta records with
several category paths, a reviewed item without meta), P5's id-only sequences (no text, no tags), and
a sidrec file without timestamps with items lacking a title or a category and one history of 300
interactions.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from training.__main__ import main
from training.data import Dataset
from training.data.readers.movielens import GENRES_100K

CLUSTERS = 6  # taste groups: an item's cluster sets its first label, a user's sets most of its items


def _histories(
    rng: np.random.Generator, n_users: int, n_items: int, length: tuple[int, int]
) -> list[list[int]]:
    """Item indices per user, mostly from the user's cluster (item i is in cluster i % CLUSTERS)."""
    histories = []
    for user in range(n_users):
        own = np.arange(user % CLUSTERS, n_items, CLUSTERS)
        size = int(rng.integers(*length))
        picks = np.where(rng.random(size) < 0.8, rng.choice(own, size), rng.integers(0, n_items, size))
        histories.append([int(i) for i in picks])
    return histories


def movielens_100k(folder: Path, rng: np.random.Generator, n_movies: int = 150, n_users: int = 120) -> str:
    genres = GENRES_100K[1:]
    lines = []
    for movie in range(n_movies):
        flags = ["0"] * len(GENRES_100K)
        chosen = {movie % CLUSTERS, *rng.integers(0, len(genres), int(rng.integers(0, 3)))}
        for genre in chosen:
            flags[1 + int(genre)] = "1"
        if movie % 50 == 49:
            flags = ["1"] + ["0"] * len(genres)  # the "unknown" genre: no tag
        words = " ".join(genres[g].lower() for g in sorted(chosen))
        lines.append(
            f"{movie + 1}|A {words} film {movie} (199{movie % 10})|01-Jan-1995||http://x|" + "|".join(flags)
        )
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    rows = []
    for user, history in enumerate(_histories(rng, n_users, n_movies, (5, 25))):
        start = int(rng.integers(874_000_000, 890_000_000))
        seen = list(dict.fromkeys(history))  # one rating per user and film, as in MovieLens
        for step, movie in enumerate(seen):
            rows.append(f"{user + 1}\t{movie + 1}\t{int(rng.integers(1, 6))}\t{start + 60 * step}")
    (folder / "u.data").write_text("\n".join(rows) + "\n")
    return f"movielens:{folder}"


def movielens_1m(folder: Path, rng: np.random.Generator, n_movies: int = 150, n_users: int = 120) -> str:
    genres = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "War"]
    lines = []
    for movie in range(n_movies):
        chosen = [genres[movie % CLUSTERS], *rng.choice(genres, int(rng.integers(0, 3)), replace=False)]
        names = "(no genres listed)" if movie % 50 == 49 else "|".join(dict.fromkeys(chosen))
        lines.append(f"{movie + 1}::{chosen[0]} story {movie} (19{60 + movie % 40})::{names}")
    (folder / "movies.dat").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    rows = []
    for user, history in enumerate(_histories(rng, n_users, n_movies, (5, 25))):
        start = int(rng.integers(956_000_000, 1_040_000_000))
        for step, movie in enumerate(dict.fromkeys(history)):
            rows.append(f"{user + 1}::{movie + 1}::{int(rng.integers(1, 6))}::{start + 60 * step}")
    (folder / "ratings.dat").write_text("\n".join(rows) + "\n")
    return f"movielens:{folder}"


def amazon_2014(folder: Path, rng: np.random.Generator, n_items: int = 140, n_users: int = 120) -> str:
    departments = [["Beauty", "Skin Care", "Face"], ["Beauty", "Makeup", "Eyes"], ["Beauty", "Hair Care"]]
    with gzip.open(folder / "meta_Beauty.json.gz", "wt") as f:
        for i in range(n_items - 1):  # the last reviewed item has no meta record
            path = [*departments[i % CLUSTERS % 3], f"Kind {i % CLUSTERS}"]
            row = {
                "asin": f"B{i:09d}",
                "title": f"{path[-1].lower()} product {i}",
                "categories": [path, ["Gifts"]],
            }
            if i % 30 == 29:
                del row["title"]
            f.write(repr(row) + "\n")  # the 2014 dump's meta lines are Python literals, not JSON
        f.write(repr({"asin": "UNREVIEWED", "title": "nobody bought this"}) + "\n")
    with gzip.open(folder / "reviews_Beauty_5.json.gz", "wt") as f:
        for user, history in enumerate(_histories(rng, n_users, n_items, (5, 25))):
            day = int(rng.integers(1_300_000_000, 1_400_000_000))
            for step, item in enumerate(history):
                review = {"reviewerID": f"A{user:05d}", "asin": f"B{item:09d}", "overall": 5.0}
                f.write(json.dumps({**review, "unixReviewTime": day + 86_400 * (step // 2)}) + "\n")
    return f"amazon2014:{folder}"


def p5(folder: Path, rng: np.random.Generator, n_items: int = 130, n_users: int = 120) -> str:
    lines = [
        " ".join(str(v) for v in [user + 1, *(i + 1 for i in history)])
        for user, history in enumerate(_histories(rng, n_users, n_items, (5, 25)))
    ]
    (folder / "sequential_data.txt").write_text("\n".join(lines) + "\n")
    maps = {"id2user": {str(u + 1): f"U{u}" for u in range(n_users)}}
    maps["id2item"] = {str(i + 1): f"ASIN{i:05d}" for i in range(n_items)}
    (folder / "datamaps.json").write_text(json.dumps(maps))
    return f"p5:{folder}"


def yelp(folder: Path, rng: np.random.Generator, n_businesses: int = 140, n_users: int = 120) -> str:
    labels = ["Restaurants", "Nightlife", "Shopping", "Beauty & Spas", "Coffee & Tea", "Automotive"]
    extras = ["Pizza", "Italian", "Bars", "Hair Salons", "Food", "Burgers", "Auto Repair", "Fashion"]
    businesses = []
    for b in range(n_businesses):
        names = [labels[b % CLUSTERS], *rng.choice(extras, int(rng.integers(0, 3)), replace=False)]
        row: dict[str, object] = {"business_id": f"biz{b:04d}", "name": f"{names[0]} place {b}"}
        row["categories"] = None if b % 40 == 39 else ", ".join(rng.permutation(names))
        if b % 35 == 34:
            del row["name"]  # no title: its text falls back to its id
        businesses.append(row)
    (folder / "yelp_academic_dataset_business.json").write_text("\n".join(map(json.dumps, businesses)) + "\n")
    reviews = []
    for user, history in enumerate(_histories(rng, n_users, n_businesses, (5, 25))):
        day = int(rng.integers(0, 2000))
        for business in history + history[-1:]:  # the last review twice: a repeat prepare drops
            day += int(rng.integers(0, 3))
            date = np.datetime64("2015-01-01") + np.timedelta64(day, "D")
            reviews.append(
                {"user_id": f"user{user}", "business_id": f"biz{business:04d}", "date": f"{date} 12:00:00"}
            )
    (folder / "yelp_academic_dataset_review.json").write_text("\n".join(map(json.dumps, reviews)) + "\n")
    return f"yelp:{folder}"


def sidrec_without_timestamps(
    folder: Path, rng: np.random.Generator, n_items: int = 120, n_users: int = 100
) -> str:
    departments = ["Garden", "Kitchen", "Toys"]
    with (folder / "items.jsonl").open("w") as f:
        for i in range(n_items):
            cluster = i % CLUSTERS
            path = ["Shop", departments[cluster % 3], f"{departments[cluster % 3]} {cluster}"]
            row: dict[str, object] = {"item_id": f"item{i}", "title": f"{path[2].lower()} thing {i}"}
            if i % 30 == 29:
                row["title"] = None  # no title
            if i % 25 != 24:
                row["category_path"] = path  # else: no category path at all
            f.write(json.dumps(row) + "\n")
    histories = _histories(rng, n_users, n_items, (4, 20))
    # A very long history: 300 interactions cycling over 15 items (a catalogue this small leaves no
    # room for more distinct ones beside the 100 sampled negatives of evaluation).
    histories[0] = [int(i) for i in np.tile(rng.choice(n_items, 15, replace=False), 20)]
    with (folder / "interactions.tsv").open("w") as f:
        f.write("user_id\titem_id\n")
        for user, history in enumerate(histories):
            f.writelines(f"u{user}\titem{i}\n" for i in history)
    return f"sidrec:{folder}"


SHAPES: dict[str, Callable[[Path, np.random.Generator], str]] = {
    "movielens-100k": movielens_100k,
    "movielens-1m": movielens_1m,
    "amazon-2014": amazon_2014,
    "p5": p5,
    "yelp": yelp,
    "no-timestamps": sidrec_without_timestamps,
}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def pipeline_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    shape = str(request.param)
    root = tmp_path_factory.mktemp(shape)
    (root / "raw").mkdir()
    source = SHAPES[shape](root / "raw", np.random.default_rng(7))
    assert main(["pipeline", "--source", source, "--out", str(root / "run")]) == 0
    return shape, root / "run"


def test_default_pipeline_gives_unique_ids_and_says_what_it_chose(pipeline_run: tuple[str, Path]) -> None:
    shape, run = pipeline_run
    dataset = Dataset.load(run / "data")
    sids = np.load(run / "tokenizer" / "sids.npy")
    assert sids.shape[0] == dataset.n_items and len(np.unique(sids, axis=0)) == dataset.n_items
    spec = json.loads((run / "tokenizer" / "sids.json").read_text())
    assert spec["codebook_size"] == 32 and spec["levels"] == 3  # ~130 items: the smallest codebook
    metrics = json.loads((run / "tokenizer" / "metrics.json").read_text())
    if shape == "p5":  # no categories in the data: every level is trained without tags
        assert metrics["supervised_levels"] == 0
    else:
        assert metrics["supervised_levels"] >= 1
    config = (run / "tokenizer" / "config.toml").read_text()
    assert config.startswith("# model.codebook_size = 32: chosen from the data")
    record = json.loads((run / "pipeline.json").read_text())
    assert any(line.startswith("build.min_tag_count = ") for line in record["choices"])
    stats = json.loads((run / "data" / "stats.json").read_text())
    if shape == "yelp":
        assert stats["dropped"]["interactions_repeated"] >= 120  # one per user, and chance repeats
    if shape == "no-timestamps":
        assert stats["max_seq_len"] == 300  # kept whole: the model reads its most recent window
    generator = json.loads((run / "generator" / "metrics.json").read_text())
    assert "evaluate_command" in generator


def test_the_bundle_serves_a_recommendation_with_a_tag_path(pipeline_run: tuple[str, Path]) -> None:
    shape, run = pipeline_run
    dataset = Dataset.load(run / "data")
    longest = max(range(dataset.n_users), key=lambda u: len(dataset.sequences[u]))
    settings = Settings(bundle_path=run / "bundle", providers="CPUExecutionProvider")  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        for user in (0, longest):
            history = [dataset.items[i].item_id for i in dataset.sequences[user][-500:]]
            response = client.post("/recommend", json={"history": history, "k": 5})
            assert response.status_code == 200, response.text
            items = response.json()["items"]
            assert len(items) == 5 and not {item["item_id"] for item in items} & set(history)
            paths = [item["tag_path"] for item in items]
            if shape == "p5":  # no categories in the data: nothing to explain with
                assert all(path == [] for path in paths), paths
            else:
                assert any(len(path) >= 1 for path in paths), (shape, paths)
