"""Every raw-format reader on small fixtures the tests write themselves (and P5 on the real files)."""

import gzip
import json

import numpy as np
import pytest

from tests.training.data.conftest import shared_dataset
from training.data.raw import BuildOptions, build_dataset
from training.data.readers import read_source
from training.data.readers.sidrec import read_sidrec
from training.data.tags import label_paths
from training.errors import DataError


def _gz(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


# ---------------------------------------------------------------------------------------- Amazon 2014
REVIEWS = [
    {"reviewerID": "U1", "asin": "A1", "unixReviewTime": 30, "overall": 5.0},
    {"reviewerID": "U1", "asin": "A2", "unixReviewTime": 10},
    {"reviewerID": "U2", "asin": "A2", "unixReviewTime": 20},
    {"reviewerID": "U1", "asin": "A3", "unixReviewTime": 20},
]
META = [  # Python literals, as in the original dump (single quotes, not JSON)
    "{'asin': 'A1', 'title': \"Mom's Face Cream\", 'brand': 'Olay', "
    "'categories': [['Beauty', 'Skin Care', 'Face'], ['Beauty', 'Gifts']], 'price': 9.99}",
    "{'asin': 'ZZ', 'title': 'never reviewed', 'categories': [['Beauty']]}",
    "{'asin': 'A2', 'description': 'A gentle cleanser.', 'categories': [['Beauty', 'Skin Care']]}",
]


def test_amazon2014_reads_literal_meta_and_primary_path(tmp_path):
    _gz(tmp_path / "reviews_Beauty_5.json.gz", [json.dumps(r) for r in REVIEWS])
    _gz(tmp_path / "meta_Beauty.json.gz", META)
    raw = read_source(f"amazon2014:{tmp_path}")
    items = {item.item_id: item for item in raw.items}
    assert list(items) == ["A1", "A2", "A3"]
    assert items["A1"].title == "Mom's Face Cream" and items["A1"].brand == "Olay"
    assert items["A1"].category_path == ("Beauty", "Skin Care", "Face")  # the first path only
    assert items["A2"].description == "A gentle cleanser." and items["A2"].title == ""
    assert items["A3"].category_path == () and raw.notes == {"items_without_meta": 1}
    dataset, _ = build_dataset(raw, BuildOptions(min_tag_count=1))
    assert [dataset.items[i].item_id for i in dataset.sequences[0]] == ["A2", "A3", "A1"]  # by time
    # pointing at the reviews file itself works too
    assert read_source(f"amazon2014:{tmp_path / 'reviews_Beauty_5.json.gz'}").item_ids == raw.item_ids


def test_amazon2014_errors(tmp_path):
    with pytest.raises(DataError, match=r"no reviews_<Category>_5\.json file"):
        read_source(f"amazon2014:{tmp_path}")
    _gz(tmp_path / "reviews_Beauty_5.json.gz", [json.dumps(REVIEWS[0]), '{"reviewerID": "U1", "asin": 7}'])
    with pytest.raises(DataError, match="no meta_Beauty file"):
        read_source(f"amazon2014:{tmp_path}")
    _gz(tmp_path / "meta_Beauty.json.gz", META)
    with pytest.raises(DataError, match=r"reviews_Beauty_5.json.gz:2: field 'asin'"):
        read_source(f"amazon2014:{tmp_path}")
    _gz(tmp_path / "reviews_Beauty_5.json.gz", [json.dumps(REVIEWS[0])])
    _gz(tmp_path / "meta_Beauty.json.gz", ["{'asin': 'A1', 'title': __import__('os')}"])
    with pytest.raises(DataError, match=r"meta_Beauty.json.gz:1: neither JSON nor a Python literal"):
        read_source(f"amazon2014:{tmp_path}")


# ------------------------------------------------------------------------------------------------ P5
def test_p5_keeps_line_order_and_maps_ids(tmp_path):
    (tmp_path / "sequential_data.txt").write_text("1 3 1 2\n2 2 3 1\n")
    dataset, _ = build_dataset(read_source(f"p5:{tmp_path}"), BuildOptions(min_tag_count=1))
    assert dataset.user_ids == ["1", "2"]
    assert [item.item_id for item in dataset.items] == ["1", "2", "3"]
    assert [s.tolist() for s in dataset.sequences] == [[2, 0, 1], [1, 2, 0]]
    maps = {"id2user": {"1": "alice", "2": "bob"}, "id2item": {"1": "X", "2": "Y", "3": "Z"}}
    (tmp_path / "datamaps.json").write_text(json.dumps(maps))
    raw = read_source(f"p5:{tmp_path}")
    assert raw.users[:3] == ["alice"] * 3 and raw.item_ids[:3] == ["Z", "X", "Y"]


@pytest.mark.parametrize(
    ("text", "maps", "message"),
    [
        ("1 2\n7\n", None, r"sequential_data.txt:2: user '7' has no interactions"),
        ("1 2\n1 3\n", None, r"sequential_data.txt:2: user '1' already on line 1"),
        ("1 2 9\n", {"id2user": {"1": "a"}, "id2item": {"2": "b"}}, r"txt:1: item '9' is not in datamaps"),
        ("1 2\n", {"user2id": {}}, r"datamaps.json: expected objects"),
    ],
)
def test_p5_errors(tmp_path, text, maps, message):
    (tmp_path / "sequential_data.txt").write_text(text)
    if maps is not None:
        (tmp_path / "datamaps.json").write_text(json.dumps(maps))
    with pytest.raises(DataError, match=message):
        read_source(f"p5:{tmp_path}")


def test_p5_on_the_real_beauty_files_matches_our_format():
    folder = shared_dataset("amazon-beauty")
    ours, _ = build_dataset(read_sidrec(folder), BuildOptions())
    p5, _ = build_dataset(read_source(f"p5:{folder / 'p5'}"), BuildOptions())
    assert (p5.n_users, p5.n_items, p5.n_interactions) == (22_363, 12_101, 198_502)
    assert p5.user_ids == ours.user_ids
    ours_ids = np.array([item.item_id for item in ours.items])
    p5_ids = np.array([item.item_id for item in p5.items])
    assert all(
        np.array_equal(ours_ids[a], p5_ids[b]) for a, b in zip(ours.sequences, p5.sequences, strict=True)
    )


# ----------------------------------------------------------------------------------------- MovieLens
def test_movielens_100k(tmp_path):
    flags = ["0"] * 19
    comedy = flags.copy()
    comedy[5] = comedy[8] = "1"  # Comedy, Drama -> first listed: Comedy
    unknown = flags.copy()
    unknown[0] = "1"
    (tmp_path / "u.item").write_bytes(
        (
            "\n".join(
                [
                    "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(comedy),
                    "2|Caf\xe9 (1996)|01-Jan-1996||http://y|" + "|".join(unknown),
                ]
            )
            + "\n"
        ).encode("latin-1")
    )
    (tmp_path / "u.data").write_text("5\t1\t4\t100\n5\t2\t3\t90\n6\t2\t5\t10\n")
    raw = read_source(f"movielens:{tmp_path}")
    assert raw.items[0].category_path == ("Movies", "Comedy", "Drama") and raw.items[1].title == "Café (1996)"
    assert raw.items[1].category_path == ("Movies",)
    assert raw.users == ["5", "5", "6"] and raw.timestamps == [100, 90, 10]
    (tmp_path / "u.data").write_text("5\t1\t4\n")
    with pytest.raises(DataError, match=r"u.data:1: expected user"):
        read_source(f"movielens:{tmp_path}")
    (tmp_path / "u.data").write_text("5\t1\t4\t100\n5\t7\t4\t100\n")
    with pytest.raises(DataError, match=r"u.data:2: movie '7' is not in the movie file"):
        read_source(f"movielens:{tmp_path}")


def test_several_labels_become_a_path_most_common_first():
    paths = label_paths(
        "Movies", [["Drama", "Romance"], ["Romance", "Comedy"], ["Drama"], [], ["War", "Drama"]]
    )
    assert paths == [
        ("Movies", "Drama", "Romance"),  # Drama: 3 films, Romance: 2
        ("Movies", "Romance", "Comedy"),
        ("Movies", "Drama"),
        ("Movies",),
        ("Movies", "Drama", "War"),
    ]


def test_movielens_1m(tmp_path):
    (tmp_path / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n".encode("latin-1")
    )
    (tmp_path / "ratings.dat").write_text("1::1::5::978300760\n")
    raw = read_source(f"movielens:{tmp_path}")
    assert raw.items[0].category_path == ("Movies", "Animation", "Children's", "Comedy")
    assert raw.timestamps == [978300760]
    (tmp_path / "movies.dat").write_text("1::Toy Story (1995)\n")
    with pytest.raises(DataError, match=r"movies.dat:1: expected MovieID::Title::Genres"):
        read_source(f"movielens:{tmp_path}")
    (tmp_path / "ratings.dat").unlink()
    with pytest.raises(DataError, match=r"no u\.data"):
        read_source(f"movielens:{tmp_path}")


# ---------------------------------------------------------------------------------------------- Yelp
def test_yelp(tmp_path):
    businesses = [
        {"business_id": "b1", "name": "Luigi's", "categories": "Pizza, Restaurants"},
        {"business_id": "b2", "name": "Fix-It", "categories": None},
    ]
    reviews = [
        {"review_id": "r1", "user_id": "u1", "business_id": "b2", "date": "2018-07-07 22:09:11"},
        {"review_id": "r2", "user_id": "u1", "business_id": "b1", "date": "2017-01-01"},
    ]
    (tmp_path / "yelp_academic_dataset_business.json").write_text("\n".join(map(json.dumps, businesses)))
    (tmp_path / "yelp_academic_dataset_review.json").write_text("\n".join(map(json.dumps, reviews)))
    raw = read_source(f"yelp:{tmp_path}")
    assert [i.category_path for i in raw.items] == [("Businesses", "Pizza", "Restaurants"), ("Businesses",)]
    assert raw.item_ids == ["b2", "b1"] and raw.timestamps == [1531001351, 1483228800]
    bad = {**reviews[0], "business_id": "b9"}
    (tmp_path / "yelp_academic_dataset_review.json").write_text(
        json.dumps(reviews[0]) + "\n" + json.dumps(bad)
    )
    with pytest.raises(DataError, match=r"review.json:2: business_id 'b9' is not in"):
        read_source(f"yelp:{tmp_path}")
    (tmp_path / "yelp_academic_dataset_review.json").write_text(json.dumps({**reviews[0], "date": "July"}))
    with pytest.raises(DataError, match=r"review.json:1: date 'July'"):
        read_source(f"yelp:{tmp_path}")
