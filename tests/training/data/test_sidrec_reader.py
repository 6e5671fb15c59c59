import time

import numpy as np
import pytest

from tests.training.data.conftest import shared_dataset
from training.data.raw import BuildOptions, build_dataset
from training.data.readers import read_source
from training.data.readers.sidrec import read_sidrec
from training.errors import DataError

ITEMS = [
    {"item_id": "a", "title": "red lipstick", "brand": "X", "category_path": ["Beauty", "Makeup"]},
    {"item_id": "b", "title": "face cream", "brand": None, "category_path": ["Beauty", "Skin Care", "Face"]},
    {"item_id": "c", "title": "serum"},
]
ROWS = [("u1", "a", 3), ("u1", "b", 4), ("u1", "c", 5)]


def test_reads_items_and_interactions(sidrec_folder):
    raw = read_sidrec(sidrec_folder(ITEMS, ROWS))
    assert [item.item_id for item in raw.items] == ["a", "b", "c"]
    assert raw.items[1].brand is None and raw.items[2].category_path == ()
    assert raw.users == ["u1"] * 3 and raw.item_ids == ["a", "b", "c"] and raw.timestamps == [3, 4, 5]


def test_interactions_without_timestamps_keep_file_order(sidrec_folder):
    folder = sidrec_folder(ITEMS, ROWS)
    (folder / "interactions.tsv").write_text("user_id\titem_id\nu1\tc\nu2\ta\n\nu1\ta\nu1\tb\n")
    raw = read_sidrec(folder)
    assert raw.item_ids == ["c", "a", "a", "b"] and raw.timestamps == [2, 3, 5, 6]  # line numbers
    dataset, _ = build_dataset(raw, BuildOptions(min_user_items=1, min_tag_count=1))
    assert [dataset.items[i].item_id for i in dataset.sequences[0]] == ["c", "a", "b"]


@pytest.mark.parametrize(
    ("items_text", "interactions_text", "message"),
    [
        ('{"item_id": "a"}\n{"item_id": \n', None, r"items.jsonl:2: not valid JSON"),
        ('{"item_id": "a"}\n{"item_id": "a"}\n', None, r"jsonl:2: duplicate item_id 'a' \(first on line 1"),
        ('{"title": "x"}\n', None, r"items.jsonl:1: field 'item_id'"),
        ('{"item_id": "a", "category_path": "A > B"}\n', None, r"items.jsonl:1: field 'category_path'"),
        ('{"item_id": "a", "brand": 3}\n', None, r"items.jsonl:1: field 'brand'"),
        (None, "user\titem\ttime\nu\ta\t1\n", r"interactions.tsv:1: expected the header"),
        (None, "user_id\titem_id\ttimestamp\nu\ta\n", r"interactions.tsv:2: expected 3 tab-separated"),
        (None, "user_id\titem_id\ttimestamp\nu\ta\t1\nu\tzz\t2\n", r"interactions.tsv:3: item_id 'zz'"),
        (None, "user_id\titem_id\ttimestamp\nu\ta\tyesterday\n", r"tsv:2: timestamp 'yesterday'"),
        (None, "user_id\titem_id\nu\ta\t1\n", r"interactions.tsv:2: expected 2 tab-separated"),
    ],
)
def test_malformed_input_names_file_and_line(sidrec_folder, items_text, interactions_text, message):
    folder = sidrec_folder(ITEMS, ROWS)
    if items_text is not None:
        (folder / "items.jsonl").write_text(items_text)
    if interactions_text is not None:
        (folder / "interactions.tsv").write_text(interactions_text)
    with pytest.raises(DataError, match=message):
        read_sidrec(folder)


def test_missing_files_and_bad_sources(sidrec_folder, tmp_path):
    folder = sidrec_folder(ITEMS, ROWS)
    (folder / "interactions.tsv").unlink()
    with pytest.raises(DataError, match=r"interactions.tsv does not exist"):
        read_sidrec(folder)
    with pytest.raises(DataError, match="unknown source format 'parquet'"):
        read_source(f"parquet:{folder}")
    with pytest.raises(DataError, match="does not exist"):
        read_source(f"sidrec:{tmp_path / 'nowhere'}")
    with pytest.raises(DataError, match="needs a path"):
        read_source("sidrec")


@pytest.mark.parametrize(
    ("name", "users", "items", "interactions"),
    [("amazon-beauty", 22_363, 12_101, 198_502), ("amazon-sports", 35_598, 18_357, 296_337)],
)
def test_real_benchmark_counts(name, users, items, interactions):
    folder = shared_dataset(name)
    started = time.perf_counter()
    dataset, dropped = build_dataset(read_sidrec(folder), BuildOptions())
    assert time.perf_counter() - started < 30  # seconds, not minutes (generous for a busy 2-core CI box)
    assert (dataset.n_users, dataset.n_items, dataset.n_interactions) == (users, items, interactions)
    assert all(count == 0 for count in dropped.values())
    lengths = np.array([len(s) for s in dataset.sequences])
    assert lengths.min() >= 5
    assert np.bincount(np.concatenate(dataset.sequences), minlength=dataset.n_items).min() >= 5
    # The README: the last row of a user is the test item; the file is in chronological order per user.
    assert all((np.diff(t) >= 0).all() for t in dataset.timestamps)
    first_user = dataset.user_ids[0]
    assert dataset.items[dataset.split().test_target[0]].item_id == _last_item_of(folder, first_user)
    assert (dataset.tag_ids[:, 0] > 1).mean() > 0.95  # almost every item has a real top-level tag


def _last_item_of(folder, user):
    last = None
    with (folder / "interactions.tsv").open() as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if fields[0] == user:
                last = fields[1]
    return last
