import numpy as np
import pytest

from training.data.raw import BuildOptions
from training.data.synthetic import SyntheticConfig, generate, generate_raw
from training.errors import ConfigError

SMALL = SyntheticConfig(n_items=600, n_users=500, seed=7)


def test_same_seed_same_data_other_seed_other_data():
    a, b = generate_raw(SMALL), generate_raw(SMALL)
    assert a.items == b.items and a.item_ids == b.item_ids and a.timestamps == b.timestamps
    c = generate_raw(SyntheticConfig(n_items=600, n_users=500, seed=8))
    assert c.item_ids != a.item_ids


def test_structure_three_levels_unknown_other_and_plausible_text():
    dataset = generate(SMALL, BuildOptions(min_tag_count=10))
    assert dataset.tags.n_levels == 3
    assert all(n > 2 for n in dataset.tags.classes_per_level)
    assert (dataset.tag_ids[:, 2] == 0).any()  # some paths lack the product type
    assert all(len(s) >= 5 for s in dataset.sequences)
    item = dataset.items[0]
    leaf = item.category_path[-1].lower()
    assert len(item.category_path) in (3, 4) and item.title
    if len(item.category_path) == 4:
        assert leaf in item.title  # titles are keyed to the taxonomy
    dataset.split()  # every user is long enough for leave-one-out


def test_next_item_stays_near_recent_interests():
    dataset = generate(SMALL, BuildOptions(min_tag_count=1))
    department = dataset.tag_ids[:, 0]
    pairs = np.concatenate([np.stack([s[:-1], s[1:]], axis=1) for s in dataset.sequences])
    same = (department[pairs[:, 0]] == department[pairs[:, 1]]).mean()
    share = np.bincount(department) / len(department)
    chance = float((share**2).sum())
    assert same > chance + 0.4, (same, chance)


@pytest.mark.parametrize(
    "override",
    [{"n_items": 3}, {"departments": 9}, {"min_seq_len": 2}, {"p_same_leaf": 0.9, "p_same_subcategory": 0.5}],
)
def test_bad_config_is_a_config_error(override):
    with pytest.raises(ConfigError):
        SyntheticConfig(**override)
