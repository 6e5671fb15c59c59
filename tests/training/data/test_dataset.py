import json

import numpy as np
import pytest

from training.data.dataset import Dataset, Item
from training.data.raw import BuildOptions, RawData, build_dataset, kcore_filter
from training.data.tags import TagVocabulary
from training.errors import DataError


def _raw(interactions, n_items=5):
    items = [
        Item(
            item_id=f"i{k}",
            title=f"title {k}",
            brand="Acme" if k % 2 else None,
            category_path=("Root", "A" if k < 3 else "B", f"leaf{k}"),
        )
        for k in range(n_items)
    ]
    users, item_ids, stamps = zip(*interactions, strict=True) if interactions else ((), (), ())
    return RawData(items=items, users=list(users), item_ids=list(item_ids), timestamps=list(stamps))


INTERACTIONS = [  # file order; u1 has a timestamp tie (i3, i1 at t=5) and an out-of-order row
    ("u1", "i3", 5),
    ("u1", "i1", 5),
    ("u2", "i0", 1),
    ("u1", "i0", 2),
    ("u2", "i1", 2),
    ("u2", "i2", 3),
    ("u1", "i2", 9),
    ("u2", "i3", 4),
]


def test_sequences_are_chronological_with_ties_in_file_order_and_users_in_first_appearance_order():
    dataset, dropped = build_dataset(_raw(INTERACTIONS), BuildOptions(min_tag_count=1))
    assert dataset.user_ids == ["u1", "u2"]
    assert [s.tolist() for s in dataset.sequences] == [[0, 3, 1, 2], [0, 1, 2, 3]]
    assert [t.tolist() for t in dataset.timestamps] == [[2, 5, 5, 9], [1, 2, 3, 4]]
    assert dropped["items_without_interactions"] == 1  # i4 is never touched and leaves the catalogue
    assert [item.item_id for item in dataset.items] == ["i0", "i1", "i2", "i3"]


def test_leave_one_out_split_popularity_and_tail():
    dataset, _ = build_dataset(_raw(INTERACTIONS), BuildOptions(min_tag_count=1))
    split = dataset.split()
    assert [s.tolist() for s in split.train] == [[0, 3], [0, 1]]
    assert [s.tolist() for s in split.valid_history] == [[0, 3], [0, 1]]
    assert split.valid_target.tolist() == [1, 2]
    assert [s.tolist() for s in split.test_history] == [[0, 3, 1], [0, 1, 2]]
    assert split.test_target.tolist() == [2, 3]
    # popularity counts training interactions only (valid/test targets are not seen in training)
    assert dataset.popularity.tolist() == [2, 1, 0, 1]
    assert dataset.tail_mask.tolist() == [False, True, True, True]  # round(0.8 * 4) = 3 least popular
    assert dataset.stats()["tail_fraction"] == 0.75


def test_split_refuses_users_shorter_than_three():
    dataset, _ = build_dataset(_raw([("u", "i0", 1), ("u", "i1", 2)]), BuildOptions(min_user_items=1))
    with pytest.raises(DataError, match="fewer than 3"):
        dataset.split()


def test_short_users_are_dropped_and_counted():
    rows = [*INTERACTIONS, ("u3", "i0", 1), ("u3", "i1", 1)]
    dataset, dropped = build_dataset(_raw(rows), BuildOptions())
    assert dataset.user_ids == ["u1", "u2"]
    assert dropped["users_short"] == 1


def test_a_repeat_of_the_previous_item_is_dropped_unless_asked_to_keep_it():
    rows = [("u", "i0", 1), ("u", "i1", 2), ("u", "i1", 3), ("u", "i0", 4), ("u", "i2", 2), ("u", "i2", 5)]
    dataset, dropped = build_dataset(_raw(rows), BuildOptions(min_tag_count=1, drop_repeats=True))
    # by time (i1 and i2 tie at t=2: file order) i0 i1 i2 i1 i0 i2: a repeat is only a consecutive one
    assert dropped["interactions_repeated"] == 0
    rows = [("u", "i0", 1), ("u", "i1", 2), ("u", "i1", 3), ("u", "i1", 3), ("u", "i0", 4), ("u", "i1", 5)]
    dataset, dropped = build_dataset(_raw(rows), BuildOptions(min_tag_count=1, drop_repeats=True))
    assert [s.tolist() for s in dataset.sequences] == [[0, 1, 0, 1]]
    assert dropped["interactions_repeated"] == 2
    kept, dropped = build_dataset(_raw(rows), BuildOptions(min_tag_count=1))
    assert kept.n_interactions == 6 and dropped["interactions_repeated"] == 0


def test_min_tag_count_can_follow_the_catalogue():
    dataset, _ = build_dataset(_raw(INTERACTIONS), BuildOptions(min_tag_count=None))
    assert dataset.tags.min_count == 2  # 4 items: the floor
    assert dataset.tags.levels[0] == ["<unknown>", "<other>", "A"]  # A has 3 items, B one


def test_unknown_item_in_interactions_is_a_data_error():
    with pytest.raises(DataError, match="'nope'"):
        build_dataset(_raw([("u", "nope", 1)]), BuildOptions())


def test_kcore_is_iterative():
    # item 2 has one interaction; removing it leaves user 1 with one -> user 1 goes, then item 1 drops to 1.
    users = np.array([0, 0, 0, 1, 1, 2, 2])
    items = np.array([0, 1, 0, 2, 1, 0, 0])
    keep = kcore_filter(users, items, 2)
    assert keep.tolist() == [True, False, True, False, False, True, True]
    assert kcore_filter(users, items, 0).all()


def test_item_texts_never_contain_the_category_path():
    dataset, _ = build_dataset(_raw(INTERACTIONS), BuildOptions(min_tag_count=1))
    texts = dataset.item_texts()
    assert texts[1] == "title 1 Acme"
    assert not any("leaf" in text or "Root" in text for text in texts)
    assert Item(item_id="X9", title="").text() == "item X9"


def test_save_load_round_trip(tmp_path):
    dataset, _ = build_dataset(_raw(INTERACTIONS), BuildOptions(min_tag_count=1, tag_levels=2))
    dataset.save(tmp_path, extra_stats={"command": "test"})
    loaded = Dataset.load(tmp_path)
    assert loaded.items == dataset.items
    assert loaded.user_ids == dataset.user_ids
    assert all(np.array_equal(a, b) for a, b in zip(loaded.sequences, dataset.sequences, strict=True))
    assert loaded.tags == dataset.tags
    assert np.array_equal(loaded.tag_ids, dataset.tag_ids)
    assert loaded.tag_ids.dtype == np.int64 and loaded.sequences[0].dtype == np.int64
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["command"] == "test" and stats["users"] == 2 and stats["tag_classes_per_level"] == [4, 6]


def test_load_names_the_bad_file_and_line(tmp_path):
    dataset, _ = build_dataset(_raw(INTERACTIONS), BuildOptions(min_tag_count=1))
    dataset.save(tmp_path)
    lines = (tmp_path / "sequences.jsonl").read_text().splitlines()
    (tmp_path / "sequences.jsonl").write_text(lines[0] + "\n{not json\n")
    with pytest.raises(DataError, match=r"sequences.jsonl:2: not valid JSON"):
        Dataset.load(tmp_path)
    empty_user = '{"user_id": "u", "items": [], "timestamps": []}'
    (tmp_path / "sequences.jsonl").write_text(f"{lines[0]}\n{empty_user}\n")
    with pytest.raises(DataError, match=r"sequences.jsonl:2: user has no interactions"):
        Dataset.load(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        Dataset.load(tmp_path / "missing")


def test_dataset_rejects_empty_sequences():
    vocab = TagVocabulary.build([], n_levels=1, min_count=1)
    with pytest.raises(DataError, match="'u' has no interactions"):
        Dataset(
            items=[Item("a", "t")],
            user_ids=["u"],
            sequences=[np.zeros(0, dtype=np.int64)],
            timestamps=[np.zeros(0, dtype=np.int64)],
            tags=vocab,
        )
