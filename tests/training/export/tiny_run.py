"""A tiny but real run, built once per test session: synthetic shop -> TF-IDF/SVD embeddings ->
HiD-VAE tokenizer (k-means-initialised codebooks, the tokenizer's own unique-ID assignment; no
gradient steps, which would take most of a minute and tend to collapse codes at this size) ->
generator (60 next-item steps of the ID loss and the dot-product head's loss) -> ``export_bundle``,
once ranking by the beam and once by the head. Seconds on 2 cores; every graph and table in the
bundle is the real thing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from training.data.dataset import Dataset
from training.data.synthetic import SyntheticConfig, generate
from training.data.text import embed_texts
from training.export.bundle import BundleInputs, CatalogueRow, export_bundle
from training.generator.model import GeneratorConfig, SidrecGenerator
from training.tokenizer.ids import assign_unique_ids
from training.tokenizer.model import HiDVAE, HiDVAEConfig

HISTORY = 12
STEPS, BATCH = 60, 32
TEXT_ENCODER = "tfidf-svd:32"  # the tokenizer's input; the bundle carries it for cold start by text


@dataclass
class TinyRun:
    bundle: Path  # ranks by the constrained beam
    dot_bundle: Path  # the same run, ranking by the dot-product head
    dataset: Dataset
    embeddings: np.ndarray  # (n_items, E)
    sids: np.ndarray  # (n_items, D)
    tokenizer: HiDVAE
    generator: SidrecGenerator


def _train_generator(dataset: Dataset, sids: np.ndarray, k: int) -> SidrecGenerator:
    """Teacher-forced cross-entropy on users' next training items: enough for non-trivial logits."""
    config = GeneratorConfig(
        n_items=dataset.n_items,
        id_length=sids.shape[1],
        codebook_size=k,
        d_model=32,
        n_heads=2,
        n_layers=1,
        cross_heads=2,
        n_decoder_layers=1,
        dropout=0.0,
        max_len=HISTORY,
    )
    model = SidrecGenerator(config)
    sequences = dataset.split().train
    codes = torch.from_numpy(sids)
    rng = np.random.default_rng(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(STEPS):
        users = rng.integers(0, len(sequences), size=BATCH)
        tokens = np.zeros((BATCH, HISTORY), dtype=np.int64)  # (B, T) left-padded
        targets = np.zeros(BATCH, dtype=np.int64)
        for row, user in enumerate(users):
            seq = sequences[user]
            cut = int(rng.integers(1, len(seq)))
            history = seq[:cut][-HISTORY:]
            tokens[row, HISTORY - len(history) :] = history + 1
            targets[row] = seq[cut]
        t = torch.from_numpy(tokens)
        memory = model.encode(t, codes[(t - 1).clamp(min=0)])  # (B, T, d)
        logits = model.id_logits(memory, t > 0, codes[targets])  # (B, D, K)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, k), codes[targets].reshape(-1))
        scores = model.user_vectors(memory[:, -1]) @ model.item_table(codes).T  # (B, n_items): the head
        loss = loss + torch.nn.functional.cross_entropy(scores, torch.from_numpy(targets))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


@functools.cache
def build_tiny_run(root: Path) -> TinyRun:
    """Built once per session and root, shared by the export and the service tests."""
    torch.set_num_threads(1)  # tiny tensors: one thread beats two on shared cores
    torch.manual_seed(0)
    dataset = generate(SyntheticConfig(n_items=800, n_users=600, seed=0))
    embeddings = embed_texts(dataset.item_texts(), TEXT_ENCODER)
    k = 16
    config = HiDVAEConfig(levels=2, codebook_size=k, hidden_dims=(64,), latent_dim=8, tag_head_hidden=32)
    tokenizer = HiDVAE(
        config, input_dim=embeddings.shape[1], tag_classes=dataset.tags.classes_per_level, tag_text_dim=16
    ).eval()
    x = torch.from_numpy(embeddings)
    with torch.no_grad():
        tokenizer.quantizer.initialise(tokenizer.encode(x))
        latents, codes = tokenizer.latents_and_codes(x)  # (N, latent), (N, L)
        distances = (latents - tokenizer.quantizer.codewords_from_indices(codes).sum(1)).norm(dim=-1)
    sids = assign_unique_ids(codes.numpy(), distances.numpy(), k)
    generator = _train_generator(dataset, sids, k)
    catalogue = [
        CatalogueRow(item.item_id, item.title, list(item.category_path), dataset.tag_ids[i].tolist())
        for i, item in enumerate(dataset.items)
    ]
    inputs = BundleInputs(
        catalogue=catalogue,
        tag_levels=dataset.tags.levels,
        sids=sids,
        tokenizer=tokenizer,
        embedding_dim=embeddings.shape[1],
        generator=generator,
        text_encoder=TEXT_ENCODER,
        item_texts=dataset.item_texts(),
        configs={"note": "tests/training/export/tiny_run.py"},
        metrics={"note": "untrained tokenizer, 60-step generator: not a quality measurement"},
    )
    export_bundle(inputs, root / "bundle")
    export_bundle(replace(inputs, decoding={"ranking": "dot"}), root / "bundle-dot")
    return TinyRun(root / "bundle", root / "bundle-dot", dataset, embeddings, sids, tokenizer, generator)
