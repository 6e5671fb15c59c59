"""The tokenizer's shape chosen from the data: Beauty's and the demo's choices, explicit values kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.config import load_config
from training.errors import ConfigError
from training.tokenizer.defaults import adapt_to_data, choose_codebook_size, choose_levels, explicit_keys
from training.tokenizer.train import TokenizerConfig

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("n_items", "k"), [(12_101, 256), (2_990, 64), (3_000, 64), (300, 32), (1_682, 64), (10**6, 256)]
)
def test_codebook_size_follows_the_catalogue(n_items: int, k: int) -> None:
    assert choose_codebook_size(n_items)[0] == k


def test_levels_cover_the_tags_and_the_catalogue() -> None:
    assert choose_levels(12_101, 256, 3)[0] == 3  # Amazon Beauty, as configs/tokenizer/default.toml
    assert choose_levels(1_682, 64, 1)[0] == 3  # MovieLens 100K: 1 genre level, 2 unsupervised
    assert choose_levels(40, 32, 0)[0] == 2
    assert choose_levels(10**6, 256, 2)[0] == 3


def test_explicit_values_are_kept_and_choices_are_explained(tmp_path: Path) -> None:
    tags = np.tile([[2, 0, 0], [3, 0, 0]], (500, 1))  # a flat hierarchy
    config = TokenizerConfig()
    adapted, notes = adapt_to_data(config, 1_000, tags, set())
    assert (adapted.model.codebook_size, adapted.model.levels) == (32, 3)
    assert notes[0].startswith("model.codebook_size = 32: chosen from the data")
    assert "tag-supervised code levels: 1 of 3" in notes[2]
    profile = tmp_path / "tok.toml"
    profile.write_text("[model]\ncodebook_size = 128\n")
    explicit = explicit_keys(profile, ["model.levels=2", "train.steps=5"])
    assert explicit == {"model.codebook_size", "model.levels", "train.steps"}
    fixed = load_config(TokenizerConfig, profile, ["model.levels=2"])
    kept, notes = adapt_to_data(fixed, 1_000, tags, explicit)
    assert (kept.model.codebook_size, kept.model.levels) == (128, 2)
    assert notes[:2] == [
        "model.codebook_size = 128: set by the config",
        "model.levels = 2: set by the config",
    ]


def test_the_beauty_config_is_left_alone() -> None:
    path = REPO / "configs" / "tokenizer" / "default.toml"
    config = load_config(TokenizerConfig, path)
    tags = np.tile([[2, 2, 2], [3, 3, 3]], (6_000, 1))
    kept, _ = adapt_to_data(config, 12_101, tags, explicit_keys(path, []))
    assert kept == config
    chosen, _ = adapt_to_data(config, 12_101, tags, set())  # and the data alone gives the same shape
    assert (chosen.model.codebook_size, chosen.model.levels) == (256, 3)


def test_more_items_than_ids_is_a_config_error() -> None:
    config = load_config(TokenizerConfig, None, ["model.codebook_size=4", "model.levels=2"])
    with pytest.raises(ConfigError, match="raise one of them"):
        adapt_to_data(config, 100, np.zeros((100, 1), np.int64), {"model.codebook_size", "model.levels"})
