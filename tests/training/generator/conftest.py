"""Small real inputs for the generator tests: the synthetic shop and random unique IDs (no tokenizer run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import Dataset
from training.data.synthetic import SyntheticConfig, generate

CODEBOOK = 8


def random_unique_ids(
    n_items: int, codebook_size: int = CODEBOOK, levels: int = 3, seed: int = 0
) -> np.ndarray:
    """(n_items, levels + 1) IDs: random codes + a disambiguation code that makes every row unique."""
    rng = np.random.default_rng(seed)
    sids = np.zeros((n_items, levels + 1), np.int64)
    sids[:, :levels] = rng.integers(0, codebook_size, (n_items, levels))
    _, group = np.unique(sids[:, :levels], axis=0, return_inverse=True)
    for g in np.unique(group):
        members = np.flatnonzero(group.reshape(-1) == g)
        sids[members, levels] = np.arange(len(members))
    assert sids.max() < codebook_size
    return sids


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shop() -> Dataset:
    return generate(SyntheticConfig(n_items=300, n_users=400, seed=3))


@pytest.fixture(scope="session")
def shop_dirs(tmp_path_factory: pytest.TempPathFactory, shop: Dataset) -> tuple[Path, Path]:
    """A prepared dataset folder and a tokenizer-shaped IDs folder (CONTRACTS §1, §2)."""
    root = tmp_path_factory.mktemp("shop")
    shop.save(root / "data")
    ids = root / "ids"
    ids.mkdir()
    sids = random_unique_ids(shop.n_items)
    np.save(ids / "sids.npy", sids, allow_pickle=False)
    meta = {
        "levels": 3,
        "codebook_size": CODEBOOK,
        "id_length": 4,
        "disambiguation_level": 3,
        "mode": "rqvae",
    }
    (ids / "sids.json").write_text(json.dumps(meta))
    return root / "data", ids
