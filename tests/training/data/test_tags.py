import pytest

from training.data.tags import OTHER_ID, UNKNOWN_ID, TagVocabulary, level_keys
from training.errors import ConfigError, DataError


def test_level_keys_drop_the_root_and_use_full_prefix_paths():
    assert level_keys(["Beauty", "Skin Care", "Face", "Creams"], 3) == [
        "Skin Care",
        "Skin Care > Face",
        "Skin Care > Face > Creams",
    ]
    assert level_keys(["Beauty", "Makeup"], 3) == ["Makeup", None, None]
    assert level_keys(["Beauty"], 2) == [None, None]
    assert level_keys([], 1) == [None]


def test_rare_classes_merge_into_other_and_short_paths_are_unknown():
    paths = [["R", "A", "x"]] * 3 + [["R", "A", "y"]] + [["R", "B", "x"]] * 2 + [["R"]]
    vocab = TagVocabulary.build(paths, n_levels=2, min_count=2)
    assert vocab.levels[0] == ["<unknown>", "<other>", "A", "B"]
    assert vocab.levels[1] == ["<unknown>", "<other>", "A > x", "B > x"]  # "A > y" has 1 item
    assert vocab.classes_per_level == [4, 4]
    assert vocab.encode(["R", "A", "y"]) == [2, OTHER_ID]
    assert vocab.encode(["R", "B"]) == [3, UNKNOWN_ID]
    assert vocab.encode(["R"]) == [UNKNOWN_ID, UNKNOWN_ID]
    assert vocab.encode(["R", "C", "x"]) == [OTHER_ID, OTHER_ID]  # unseen parent: never its child's class
    assert vocab.display(1, 3) == "x"
    assert vocab.encode_all(paths).shape == (len(paths), 2)


def test_same_leaf_name_under_different_parents_is_two_classes():
    vocab = TagVocabulary.build([["R", "A", "Face"], ["R", "B", "Face"]], n_levels=2, min_count=1)
    assert vocab.encode(["R", "A", "Face"])[1] != vocab.encode(["R", "B", "Face"])[1]


def test_json_round_trip_and_validation():
    vocab = TagVocabulary.build([["R", "A", "x"]], n_levels=2, min_count=1)
    assert TagVocabulary.from_json(vocab.to_json(), "tags.json") == vocab
    with pytest.raises(DataError, match=r"tags\.json"):
        TagVocabulary.from_json({"levels": [["A"]], "min_count": 1}, "tags.json")
    with pytest.raises(DataError, match="min_count"):
        TagVocabulary.from_json({"levels": [["<unknown>", "<other>"]]}, "tags.json")


@pytest.mark.parametrize(("levels", "min_count"), [(0, 30), (3, 0)])
def test_bad_settings_are_config_errors(levels, min_count):
    with pytest.raises(ConfigError):
        TagVocabulary.build([], n_levels=levels, min_count=min_count)
