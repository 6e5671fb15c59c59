"""The chain on synthetic data: the loss decreases, the CLIs write a loadable run, metrics lie in [0, 1]."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.__main__ import main
from training.config import load_config
from training.data import Dataset
from training.errors import ConfigError
from training.evaluate.report import MAIN_METRICS
from training.generator.cooccurrence import alignment_positives
from training.generator.losses import (
    GeneratorObjective,
    LossConfig,
    PositiveTables,
    catalogue_cross_entropy,
    dot_loss,
)
from training.generator.model import GeneratorConfig, SidrecGenerator
from training.generator.train import (
    EvalConfig,
    GeneratorRunConfig,
    TrainConfig,
    train_generator,
    training_chunks,
)

from .conftest import CODEBOOK, random_unique_ids

REPO = Path(__file__).resolve().parents[3]
TEST_CONFIG = REPO / "configs" / "generator" / "test.toml"


def test_training_chunks_cover_every_transition_once() -> None:
    chunks = training_chunks([np.array([0, 1, 2, 3, 4, 5, 6])], max_len=3)
    assert chunks.tolist() == [[4, 5, 6, 7], [1, 2, 3, 4]]  # tokens = items + 1, left padded
    assert training_chunks([np.array([9])], max_len=3).shape == (0, 4)


def test_dot_loss_smooths_over_the_candidates_it_offers(shop: Dataset) -> None:
    sids = random_unique_ids(shop.n_items)
    table = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.from_numpy(sids)])
    config = GeneratorConfig(n_items=shop.n_items, id_length=4, codebook_size=CODEBOOK, d_model=32)
    model = SidrecGenerator(config).eval()
    torch.manual_seed(0)
    users = torch.randn(6, model.item_table(table[1:]).shape[1])
    targets = torch.arange(6)
    with torch.no_grad():
        full = dot_loss(model, users, targets, table, LossConfig(dot_smoothing=0.2))
        logits = users @ model.item_table(table[1:]).T
        assert torch.allclose(full, F.cross_entropy(logits, targets, label_smoothing=0.2))

        torch.manual_seed(1)
        sampled = torch.randint(shop.n_items, (40,))
        targets = sampled[:6]  # every row's target is also among the sampled negatives
        torch.manual_seed(1)
        loss = dot_loss(model, users, targets, table, LossConfig(dot_negatives=40, dot_smoothing=0.2))
        expected = []
        for user, target in zip(users, targets, strict=True):
            offered = torch.cat([target[None], sampled[sampled != target]])
            log_p = (user @ model.item_table(table[1:])[offered].T).log_softmax(-1)
            expected.append(0.8 * -log_p[0] - 0.2 * log_p.mean())
        assert torch.isfinite(loss)
        assert torch.allclose(loss, torch.stack(expected).mean(), atol=1e-5)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
def test_catalogue_cross_entropy_matches_torch_in_value_and_gradient(smoothing: float) -> None:
    torch.manual_seed(0)
    users = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    items = (3 * torch.randn(300, 5, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(300, (7,))
    ours = catalogue_cross_entropy(users, items, targets, smoothing)
    ours_grads = torch.autograd.grad(3 * ours, (users, items))
    theirs = F.cross_entropy(users @ items.T, targets, label_smoothing=smoothing)
    theirs_grads = torch.autograd.grad(3 * theirs, (users, items))
    assert torch.allclose(ours, theirs)
    for got, expected in zip(ours_grads, theirs_grads, strict=True):
        assert torch.allclose(got, expected)


def test_catalogue_cross_entropy_in_bfloat16_stays_close_to_float64() -> None:
    torch.manual_seed(0)
    users = torch.randn(64, 16, dtype=torch.float64, requires_grad=True)
    items = torch.randn(2000, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(2000, (64,))
    exact = catalogue_cross_entropy(users, items, targets, 0.1)
    exact_grads = torch.autograd.grad(exact, (users, items))
    low = catalogue_cross_entropy(users, items, targets, 0.1, torch.bfloat16)
    low_grads = torch.autograd.grad(low, (users, items))
    assert low.dtype == torch.float64
    assert abs(float(low - exact)) < 0.02 * float(exact)
    for got, expected in zip(low_grads, exact_grads, strict=True):
        assert got.dtype == torch.float64
        assert float((got - expected).norm() / expected.norm()) < 0.02


def test_loss_decreases_on_a_fixed_batch(shop: Dataset) -> None:
    torch.manual_seed(0)
    sids = random_unique_ids(shop.n_items)
    table = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.from_numpy(sids)])
    found = alignment_positives(shop.split().train, sids[:, :3])
    positives = PositiveTables(
        *(torch.from_numpy(a) for a in (found.neighbours, found.weights, found.tuple_ids))
    )
    config = GeneratorConfig(
        n_items=shop.n_items, id_length=4, codebook_size=CODEBOOK, d_model=32, max_len=10
    )
    objective = GeneratorObjective(SidrecGenerator(config), table, positives, LossConfig())
    batch = torch.from_numpy(training_chunks(shop.split().train, 10)[:64])
    optimizer = torch.optim.Adam(objective.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        total, parts = objective(batch[:, :-1], batch[:, 1:])
        assert set(parts) == {"ce", "dot", "item", "seq"}
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(float(total))
    assert losses[-1] < 0.8 * losses[0]


def test_max_steps_stops_mid_epoch_and_validates_the_cut_epoch(shop: Dataset) -> None:
    config = GeneratorRunConfig(
        train=TrainConfig(epochs=3, batch_size=32, max_steps=2), eval=EvalConfig(valid_users=20)
    )
    config.model.d_model, config.model.max_len = 16, 8
    assert len(training_chunks(shop.split().train, 8)) // 32 > 2  # an epoch is longer than the cap
    trained = train_generator(shop, random_unique_ids(shop.n_items), CODEBOOK, config)
    assert trained.metrics["steps"] == 2 and trained.metrics["best_epoch"] == 1
    (record,) = trained.metrics["history"]
    assert "valid.ndcg@10" in record and record["loss.ce"] > 0
    with pytest.raises(ConfigError, match="max_steps"):
        TrainConfig(max_steps=-1)


def test_generator_and_evaluate_clis_end_to_end(shop_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    data, ids = shop_dirs
    run = tmp_path / "run"
    base = ["--data", str(data), "--ids", str(ids), "--config", str(TEST_CONFIG), "--set", "train.epochs=2"]
    assert main(["generator", *base, "--out", str(run)]) == 0
    sasrec = tmp_path / "sasrec"
    assert main(["generator", *base, "--out", str(sasrec), "--set", "model.use_semantic=false"]) == 0
    checkpoint = torch.load(run / "generator.pt", weights_only=True)
    assert checkpoint["config"]["n_items"] == 300
    assert json.loads((run / "run.json").read_text())["ids"] == str(ids.resolve())
    assert load_config(GeneratorRunConfig, run / "config.toml").model.codebook_size == CODEBOOK

    results = tmp_path / "results.json"
    assert (
        main(["evaluate", "--run", f"sidrec={run}", "--run", f"sasrec={sasrec}", "--results", str(results)])
        == 0
    )
    metrics = json.loads((run / "metrics.json").read_text())
    for key in MAIN_METRICS:
        assert 0.0 <= metrics[key] <= 1.0
        assert 0.0 <= metrics["head"][key] <= 1.0 and 0.0 <= metrics["tail"][key] <= 1.0
    assert metrics["full.recall@10"] >= metrics["full.recall@5"]
    assert metrics["train_seconds"] > 0 and metrics["command"].startswith("python -m training generator")
    assert metrics["split"] == "test" and metrics["head"]["users"] + metrics["tail"]["users"] == 400
    table = json.loads(results.read_text())
    assert set(table["models"]) == {"sidrec", "sasrec"}
    assert set(table["models"]["sidrec"]["full"]) == {"recall@5", "ndcg@5", "recall@10", "ndcg@10"}
    assert results.with_suffix(".png").stat().st_size > 0
    assert metrics["beam"] == 20 and set(metrics["fused"]) >= {"full.recall@10", "head", "tail"}

    assert main(["evaluate", "--run", str(run), "--split", "valid", "--beam", "30", "--cached"]) == 0
    wider = json.loads((run / "metrics.json").read_text())
    assert wider["beam"] == 30 and wider["split"] == "valid", "a different beam is evaluated, not cached"
    assert main(["evaluate", "--run", str(run), "--beam", "5"]) == 2  # too narrow for @10: one clear line


def test_missing_ids_is_a_clear_error(shop_dirs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    data, _ = shop_dirs
    assert main(["generator", "--data", str(data), "--ids", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "sids.npy does not exist" in capsys.readouterr().err


def test_the_training_kernel_benchmark_writes_its_report(tmp_path: Path) -> None:
    from benchmarks.train_step import main as benchmark

    out = tmp_path / "step.json"
    assert (
        benchmark(["--items", "64", "--rows", "16", "--dim", "8", "--repeats", "1", "--out", str(out)]) == 0
    )
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m benchmarks.train_step --items 64")
    for row in report["results"].values():
        assert row["sidrec_ms"] > 0 and row["torch_ms"] > 0 and row["speedup"] > 0
