"""Write a bundle directory: the ONNX graphs, the tables, and the manifest that vouches for them.

The service reads nothing else, so everything it needs to serve and to explain a recommendation is
frozen here: the SID table and its flattened trie (``service.prefix_index``), the tag vocabulary,
the catalogue rows (id, title, category path, tag ids) and the configs and metrics of the run.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.manifest import DecodingDefaults, FileSpec, IdSpec, Manifest, sha256_file
from service.prefix_index import PrefixIndex
from training.errors import DataError
from training.export.cached_step import CrossKVGraph, IncrementalStepGraph
from training.export.graphs import (
    EncoderGraph,
    ItemGraph,
    StepGraph,
    TagHeadsGraph,
    TokenizerGraph,
    UserGraph,
    export_graph,
)
from training.export.text_encoder import export_text_encoder
from training.generator.model import SidrecGenerator
from training.tokenizer.model import HiDVAE

__all__ = ["BundleInputs", "CatalogueRow", "export_bundle"]


@dataclass(frozen=True)
class CatalogueRow:
    """What the service shows for an item (row ``index`` of the canonical item table)."""

    item_id: str
    title: str
    category_path: list[str]
    tags: list[int]  # tag id per level (0 = unknown)


@dataclass
class BundleInputs:
    """Everything a bundle is made of, already in memory (``training.export.cli`` loads a run into it)."""

    catalogue: list[CatalogueRow]
    tag_levels: list[list[str]]  # class names per level, full prefix paths ("Skin Care > Face")
    sids: np.ndarray  # int64 (n_items, L + 1), unique rows
    tokenizer: HiDVAE
    embedding_dim: int
    generator: SidrecGenerator
    mode: str = "hidvae"
    configs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    decoding: dict[str, Any] = field(default_factory=dict)  # overrides of DecodingDefaults (k, beam, ranking)
    tag_temperatures: list[float] | None = None  # per tag level (see ``TagHeadsGraph``); None = 1
    # the tokenizer's text encoder spec and the catalogue's texts (``Dataset.item_texts``): with both,
    # the bundle carries the encoder for cold start by text (``training.export.text_encoder``)
    text_encoder: str | None = None
    item_texts: list[str] | None = None
    text_cache_dir: Path | None = None  # the tokenizer run's embedding cache (``embed_texts``)


def _git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _check(inputs: BundleInputs) -> tuple[int, int]:
    n_items, id_length = inputs.sids.shape
    gen = inputs.generator.config
    if len(inputs.catalogue) != n_items:
        raise DataError(f"catalogue has {len(inputs.catalogue)} rows but sids.npy has {n_items}")
    if (gen.n_items, gen.id_length) != (n_items, id_length):
        raise DataError(
            f"generator was trained for {gen.n_items} items × ID length {gen.id_length}, "
            f"the tokenizer's sids.npy is {n_items} × {id_length}"
        )
    if (
        inputs.tokenizer.config.levels != id_length - 1
        or inputs.tokenizer.config.codebook_size != gen.codebook_size
    ):
        raise DataError("tokenizer levels/codebook size do not match the generator's ID spec")
    return n_items, id_length


def export_bundle(inputs: BundleInputs, out: Path) -> Manifest:
    """Write the bundle for ``inputs`` into ``out`` (created) and return its manifest."""
    n_items, id_length = _check(inputs)
    out.mkdir(parents=True, exist_ok=True)
    created = datetime.now(UTC)
    bundle_id = f"sidrec-{created:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"
    meta = {"bundle_id": bundle_id}
    k = inputs.generator.config.codebook_size
    levels = id_length - 1
    history_length = inputs.generator.config.max_len
    n_tag_levels = len(inputs.tokenizer.tag_heads)
    max_depth = max(len(row.category_path) for row in inputs.catalogue)
    sids = torch.from_numpy(inputs.sids.astype(np.int64))

    tokens = torch.tensor([[0] * (history_length - 2) + [1, 2], [3] * history_length])  # (2, T)
    history_codes = sids[(tokens - 1).clamp(min=0)]  # (2, T, D)
    memory = inputs.generator.eval().encode(tokens, history_codes).detach()  # (2, T, d)
    batch = {0: "batch"}
    # The history axis is dynamic too: the service pads each group of histories only to its longest.
    history = {0: "batch", 1: "history"}
    tag_outputs = [f"tag_logits_{lvl}" for lvl in range(n_tag_levels)]
    prob_outputs = [f"tag_probs_{lvl}" for lvl in range(n_tag_levels)]
    graphs = {
        "tokenizer": export_graph(
            TokenizerGraph(inputs.tokenizer, inputs.tokenizer.input_dim - inputs.embedding_dim),
            (torch.randn(2, inputs.embedding_dim),),
            out / "tokenizer.onnx",
            ["embedding"],
            ["codes", *tag_outputs],
            {name: batch for name in ["embedding", "codes", *tag_outputs]},
            meta,
        ),
        "tag_heads": export_graph(
            TagHeadsGraph(inputs.tokenizer, inputs.tag_temperatures),
            (sids[:2, :levels],),
            out / "tag_heads.onnx",
            ["codes"],
            prob_outputs,
            {name: batch for name in ["codes", *prob_outputs]},
            meta,
        ),
        "generator_encoder": export_graph(
            EncoderGraph(inputs.generator),
            (tokens, history_codes),
            out / "generator_encoder.onnx",
            ["history_tokens", "history_codes"],
            ["memory"],
            {"history_tokens": history, "history_codes": history, "memory": history},
            meta,
        ),
        "generator_step": export_graph(
            StepGraph(inputs.generator),
            (memory, tokens > 0, sids[:2, :1]),
            out / "generator_step.onnx",
            ["memory", "memory_mask", "prefix"],
            ["logits"],
            {
                "memory": {0: "rows", 1: "history"},
                "memory_mask": {0: "rows", 1: "history"},
                "prefix": {0: "rows", 1: "prefix_length"},
                "logits": {0: "rows"},
            },
            meta,
        ),
    }
    cross_kv = CrossKVGraph(inputs.generator).eval()(memory).detach()  # (2, layers, 2, h, T, dh)
    graphs["generator_cross_kv"] = export_graph(
        CrossKVGraph(inputs.generator),
        (memory,),
        out / "generator_cross_kv.onnx",
        ["memory"],
        ["cross_kv"],
        {"memory": history, "cross_kv": {0: "batch", 4: "history"}},
        meta,
    )
    gen = inputs.generator.config
    past = torch.zeros(4, 1, gen.n_decoder_layers, 2, gen.d_model)  # (N, S, layers, 2, d): 2 beams each
    graphs["generator_step_incremental"] = export_graph(
        IncrementalStepGraph(inputs.generator),
        (cross_kv, tokens > 0, sids[torch.arange(4) % n_items, :1], past),
        out / "generator_step_incremental.onnx",
        ["cross_kv", "memory_mask", "prefix", "past"],
        ["logits", "newest"],
        {
            "cross_kv": {0: "batch", 4: "history"},
            "memory_mask": history,
            "prefix": {0: "rows", 1: "prefix_length"},
            "past": {0: "rows", 1: "prefix_length"},
            "logits": {0: "rows"},
            "newest": {0: "rows"},
        },
        meta,
    )
    table_files = {
        "sids": "sids.npy",
        "prefix_index": "prefix_index.npz",
        "tags": "tags.json",
        "catalogue": "catalogue.jsonl",
    }
    if inputs.decoding.get("ranking") == "dot":
        generator = inputs.generator.eval()
        graphs["generator_user"] = export_graph(
            UserGraph(generator),
            (memory,),
            out / "generator_user.onnx",
            ["memory"],
            ["user"],
            {"memory": history, "user": batch},
            meta,
        )
        graphs["item_vectors"] = export_graph(
            ItemGraph(generator),
            (sids[:2],),
            out / "item_vectors.onnx",
            ["codes"],
            ["vectors"],
            {"codes": batch, "vectors": batch},
            meta,
        )
        with torch.no_grad():
            table = generator.item_table(sids).numpy().astype(np.float32)  # (n_items, item_dim)
        np.save(out / "item_table.npy", table, allow_pickle=False)
        table_files["item_table"] = "item_table.npy"
    metrics = inputs.metrics
    if inputs.text_encoder is not None and inputs.item_texts is not None:
        text = export_text_encoder(inputs.item_texts, inputs.text_encoder, out, inputs.text_cache_dir)
        if text is not None and text["file"] is not None:
            table_files["text_encoder"] = text["file"]
        metrics = {**metrics, "text_encoder": text}
    np.save(out / "sids.npy", inputs.sids.astype(np.int64), allow_pickle=False)
    PrefixIndex.build(inputs.sids.astype(np.int64), k).save(out / "prefix_index.npz")
    (out / "tags.json").write_text(json.dumps({"levels": inputs.tag_levels}, ensure_ascii=False) + "\n")
    with (out / "catalogue.jsonl").open("w", encoding="utf-8") as handle:
        for index, row in enumerate(inputs.catalogue):
            record = {
                "item_id": row.item_id,
                "index": index,
                "title": row.title,
                "category_path": row.category_path,
                "tags": row.tags,
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    tables = {name: FileSpec(file=file, sha256=sha256_file(out / file)) for name, file in table_files.items()}
    manifest = Manifest(
        bundle_id=bundle_id,
        created_at=created.isoformat(),
        git_sha=_git_sha(),
        n_items=n_items,
        n_tag_levels=n_tag_levels,
        embedding_dim=inputs.embedding_dim,
        id_spec=IdSpec(
            levels=levels,
            codebook_size=k,
            id_length=id_length,
            disambiguation_level=levels,
            token_offsets=[lvl * k for lvl in range(id_length)],
            mode=inputs.mode,
        ),
        graphs=graphs,
        tables=tables,
        decoding=DecodingDefaults(
            **{"history_length": history_length, "max_tag_filter_depth": max_depth, **inputs.decoding}
        ),
        configs=inputs.configs,
        metrics=metrics,
    )
    manifest.write(out)
    return manifest
