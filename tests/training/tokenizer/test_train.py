"""End to end on a small synthetic catalogue with configs/tokenizer/test.toml, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.__main__ import main
from training.config import load_config
from training.data import Dataset
from training.data.raw import BuildOptions
from training.data.synthetic import SyntheticConfig, generate
from training.errors import DataError
from training.tokenizer import TokenizerConfig, load_tokenizer
from training.tokenizer.collaborative import tokenizer_input
from training.tokenizer.ids import assign_unique_ids
from training.tokenizer.train import check_inputs, supervised_levels, train

REPO = Path(__file__).resolve().parents[3]
TEST_CONFIG = REPO / "configs" / "tokenizer" / "test.toml"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tokenizer")
    data = root / "data"
    generate(SyntheticConfig(n_items=800, n_users=600), BuildOptions(min_tag_count=5)).save(data)
    out = root / "tok"
    assert main(["tokenizer", "--data", str(data), "--out", str(out), "--config", str(TEST_CONFIG)]) == 0
    return data, out


def test_run_folder_follows_the_contract(run: tuple[Path, Path]) -> None:
    data, out = run
    n_items = Dataset.load(data).n_items
    sids = np.load(out / "sids.npy", allow_pickle=False)
    spec = json.loads((out / "sids.json").read_text())
    assert spec == {
        "levels": 3,
        "codebook_size": 32,
        "id_length": 4,
        "disambiguation_level": 3,
        "mode": "hidvae",
    }
    assert sids.dtype == np.int64 and sids.shape == (n_items, 4)
    assert len(np.unique(sids, axis=0)) == n_items
    assert sids.min() >= 0 and sids.max() < 32
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("collision_rate", "max_items_per_id", "unique_ids_after_resolution", "tag_accuracy",
                "codebook_usage", "codebook_perplexity", "reconstruction_mse", "prefix_tag_purity",
                "train_seconds", "command"):  # fmt: skip
        assert key in metrics, key
    assert metrics["unique_ids_after_resolution"] == n_items
    assert metrics["command"].startswith("python -m training tokenizer --data")
    assert (out / "config.toml").is_file()


def test_assignment_is_deterministic_from_the_saved_model(run: tuple[Path, Path]) -> None:
    data, out = run
    model, config = load_tokenizer(out)
    dataset = Dataset.load(data)
    embeddings = tokenizer_input(
        dataset, config.encoder, config.collaborative_dims, config.collaborative_weight, data / "cache"
    )
    x = torch.from_numpy(embeddings)
    latents, codes = model.latents_and_codes(x)
    with torch.no_grad():
        distances = (latents - model.quantizer.codewords_from_indices(codes).sum(1)).norm(dim=-1)
    again = assign_unique_ids(codes.numpy(), distances.numpy(), config.model.codebook_size)
    assert np.array_equal(again, np.load(out / "sids.npy"))


def test_tag_heads_beat_the_majority_class_on_held_out_items(run: tuple[Path, Path]) -> None:
    data, out = run
    tags = Dataset.load(data).tag_ids
    metrics = json.loads((out / "metrics.json").read_text())
    for level, accuracy in enumerate(metrics["tag_accuracy"]):
        known = tags[:, level][tags[:, level] > 0]
        majority = np.bincount(known).max() / len(known)
        assert accuracy > majority + 0.1, (level, accuracy, majority)


def test_codes_to_codewords_to_decoder_round_trip(run: tuple[Path, Path]) -> None:
    data, out = run
    model, config = load_tokenizer(out)
    sids = torch.from_numpy(np.load(out / "sids.npy"))
    x = torch.from_numpy(
        tokenizer_input(
            Dataset.load(data),
            config.encoder,
            config.collaborative_dims,
            config.collaborative_weight,
            data / "cache",
        )
    )
    with torch.no_grad():
        forward = model(x, torch.zeros(len(x), 3, dtype=torch.long)).reconstruction
        assert torch.allclose(model.decode_codes(sids[:, :3]), forward, atol=1e-5)


def test_cli_reports_a_bad_config_in_one_line(
    run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = run
    args = ["tokenizer", "--data", str(data), "--out", str(out.parent / "bad"), "--config", str(TEST_CONFIG)]
    assert main([*args, "--set", "model.codebook_size=1"]) == 2
    assert "codebook_size >= 2" in capsys.readouterr().err


def _inputs(n: int = 20) -> tuple[np.ndarray, np.ndarray, list[int]]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 8)).astype(np.float32), rng.integers(1, 4, (n, 3)), [4, 4, 4]


def test_empty_catalogue_is_refused() -> None:
    with pytest.raises(DataError, match="catalogue is empty"):
        check_inputs(np.zeros((0, 8), np.float32), np.zeros((0, 3), np.int64), [4, 4, 4], TokenizerConfig())


def test_nan_embeddings_are_refused() -> None:
    x, tags, classes = _inputs()
    x[7, 3] = np.nan
    with pytest.raises(DataError, match="NaN/inf for 1 items \\(first: item index 7\\)"):
        check_inputs(x, tags, classes, TokenizerConfig())


def test_only_leading_tag_levels_with_two_known_classes_are_supervised() -> None:
    _, tags, _ = _inputs()
    assert supervised_levels(tags) == 3
    tags[:, 1] = np.where(np.arange(20) % 2, 1, 0)  # only "<other>" and unknown
    assert supervised_levels(tags) == 1
    tags[:, 0] = 0
    assert supervised_levels(tags) == 0


def test_a_tokenizer_trains_more_code_levels_than_the_data_has_tag_levels() -> None:
    x, tags, classes = _inputs(64)
    tags[:, 1:] = 0  # a flat hierarchy
    config = load_config(
        TokenizerConfig, TEST_CONFIG, ["model.levels=3", "train.steps=4", "train.eval_every=2"]
    )
    trained = train(x, tags, classes, [np.eye(4, dtype=np.float32)] * 3, config)
    assert len(trained.model.tag_heads) == 1 and trained.metrics["supervised_levels"] == 1
    assert trained.sids.shape == (64, 4) and len(np.unique(trained.sids, axis=0)) == 64
    tags[:] = 0  # no categories at all: one inert head, so that every bundle has a tag-heads graph
    trained = train(x, tags, classes, [np.eye(4, dtype=np.float32)] * 3, config)
    assert len(trained.model.tag_heads) == 1 and trained.metrics["supervised_levels"] == 0


def test_committed_default_config_is_the_dataclass_default() -> None:
    assert load_config(TokenizerConfig, REPO / "configs" / "tokenizer" / "default.toml") == TokenizerConfig()


def test_text_probe_benchmark_rebuilds_the_runs_split(run: tuple[Path, Path], tmp_path: Path) -> None:
    """benchmarks/text_probe.py scores the same held-out items as the run: same probe, same figures."""
    from benchmarks.text_probe import main as probe_main

    data, out = run
    config = load_config(TokenizerConfig, out / "config.toml")
    encoder, split = config.encoder, config.train
    report_path = tmp_path / "probe.json"
    assert probe_main(["--data", str(data), "--encoder", encoder, "--encoder", "tfidf-svd:16",
                       "--valid-fraction", str(split.valid_fraction), "--seed", str(split.seed),
                       "--out", str(report_path)]) == 0  # fmt: skip
    report = json.loads(report_path.read_text())
    names = [row["encoder"] for row in report["probes"]]
    assert names == [encoder, "tfidf-svd:16", f"{encoder} + tfidf-svd:16"]
    run_probe = json.loads((out / "metrics.json").read_text())["tag_accuracy_text_probe"]
    assert report["probes"][0]["tag_accuracy"] == pytest.approx(run_probe, abs=1e-4)
    assert report["command"].startswith("python -m benchmarks.text_probe --data")
