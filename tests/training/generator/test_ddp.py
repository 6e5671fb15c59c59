"""The trainer runs unchanged under DDP: two CPU processes (gloo) train one step and agree on the weights."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.data.synthetic import SyntheticConfig, generate
from training.generator.train import EvalConfig, GeneratorRunConfig, TrainConfig, train_generator

from .conftest import CODEBOOK, random_unique_ids


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world)}
    )
    torch.set_num_threads(1)
    shop = generate(SyntheticConfig(n_items=120, n_users=150, seed=5))
    config = GeneratorRunConfig(
        train=TrainConfig(epochs=1, batch_size=32, seed=3, max_steps=1),
        eval=EvalConfig(valid_users=20, beam=10),
    )
    config.model.d_model, config.model.max_len = 16, 8
    trained = train_generator(shop, random_unique_ids(shop.n_items), CODEBOOK, config)
    torch.save(trained.model.state_dict(), Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_two_gloo_processes_agree_after_one_step(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    first = torch.load(tmp_path / "rank0.pt", weights_only=True)
    second = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.allclose(first[name], second[name], atol=1e-6), name
