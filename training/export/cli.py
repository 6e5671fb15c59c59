"""Export a generator run to a verified ONNX bundle for the service.

  python -m training export --run runs/beauty/gen-sidrec --out runs/beauty/bundle

RUN is a generator run folder (``python -m training generator --out RUN``); its ``run.json`` says
where the prepared data and the tokenizer run are (override with --data / --ids). The bundle holds
tokenizer.onnx, tag_heads.onnx, generator_encoder.onnx, generator_step.onnx, the incremental fast
path (generator_cross_kv.onnx, generator_step_incremental.onnx), sids.npy, prefix_index.npz, tags.json,
catalogue.jsonl and manifest.json (schema: service/manifest.py).

After writing, the bundle is loaded exactly as the service loads it (checksums, graph inputs and
outputs, bundle id in every graph) and the ONNX encoder + both step paths are compared with torch
on real test histories; the largest difference goes to metrics.json and an export that drifts is refused.
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import provenance
from training.data import Dataset
from training.errors import DataError
from training.evaluate.calibration import fit_temperature
from training.evaluate.ranking import RankingInputs, full_ranking_top
from training.export.bundle import BundleInputs, CatalogueRow, export_bundle
from training.generator.beam import PrefixTrie
from training.generator.model import SidrecGenerator
from training.generator.train import load_run
from training.tokenizer.artifacts import load_tokenizer
from training.tokenizer.model import HiDVAE

__all__ = ["add_arguments", "run"]

#: ONNX vs torch step logits on real histories; see tests/training/export/test_export.py for why.
PARITY_ATOL = 1e-4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="generator run folder (generator --out)")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write (created)")
    parser.add_argument(
        "--data", type=Path, default=None, help="prepared dataset (default: from RUN/run.json)"
    )
    parser.add_argument("--ids", type=Path, default=None, help="tokenizer run (default: from RUN/run.json)")
    parser.add_argument("--k", type=int, default=10, help="default k of the service (default: %(default)s)")
    parser.add_argument("--beam", type=int, default=20, help="default beam width (default: %(default)s)")


def _read_toml(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    return value if isinstance(value, dict) else {}


def parity(
    bundle: Path, generator: SidrecGenerator, dataset: Dataset, sids: np.ndarray, n: int = 64
) -> float:
    """Largest |ONNX - torch| logit over every ID level on ``n`` test histories, loaded as served, for
    both decoding paths (reference step graph and incremental graphs)."""
    from service.bundle import load_bundle
    from service.recommender import Recommender

    loaded = load_bundle(bundle, ["CPUExecutionProvider"], threads=1)
    recommender = Recommender(loaded)
    split = dataset.split()
    histories = [split.test_history[u].tolist() for u in range(min(n, dataset.n_users))]
    memory, mask = recommender.encode(histories, sids)  # (B, T_b, d), (B, T_b): padded to the longest
    t = recommender.history_length
    tokens = torch.zeros((len(histories), t), dtype=torch.long)  # (B, T)
    for row, history in enumerate(histories):
        recent = history[-t:]
        tokens[row, t - len(recent) :] = torch.tensor(recent) + 1
    codes = torch.from_numpy(sids)[(tokens - 1).clamp(min=0)]  # (B, T, D)
    codes[tokens == 0] = 0
    worst = 0.0
    with torch.no_grad():
        ref_memory = generator.encode(tokens, codes)
        real = np.abs(memory - ref_memory.numpy()[:, t - memory.shape[1] :])[mask]  # (real positions, d)
        worst = float(real.max())
        for path in (recommender, Recommender(loaded, kv_cache=False)):
            decoder = path.decoder(memory, mask)  # one beam per history, continuing itself
            for level in range(sids.shape[1]):
                prefix = sids[np.arange(len(histories)) % len(sids), :level]  # (B, S)
                expected = generator.step(ref_memory, tokens > 0, torch.from_numpy(prefix)).numpy()
                got = decoder.step(prefix[:, None], np.zeros((len(histories), 1), dtype=np.int64))[:, 0]
                worst = max(worst, float(np.abs(got - expected).max()))
        if recommender.ranking == "dot":  # the head: user vectors, and the item vectors of a cold item
            users = generator.user_vectors(ref_memory[:, -1]).numpy()
            worst = max(worst, float(np.abs(recommender.user_vectors(memory) - users).max()))
            unknown = torch.full((len(sids),), generator.unknown_token)
            cold = generator.item_vectors(unknown, torch.from_numpy(sids)).numpy()
            worst = max(worst, float(np.abs(recommender.cold_item_vectors(sids) - cold).max()))
    return worst


#: validation users whose recommendations calibrate the tag heads (``tag_temperatures``)
VALID_USERS = 2000


def tag_temperatures(
    tokenizer: HiDVAE, generator: SidrecGenerator, ranking: str, beam: int, dataset: Dataset, sids: np.ndarray
) -> list[float]:
    """One temperature per tag level, fitted on the items the run recommends (its own ordering, top
    10) to ``VALID_USERS`` validation users, against their catalogue classes: the confidence an
    explanation shows should match how often such a tag is right *on what is recommended*, and
    recommendations favour popular items whose tags are easier than a random catalogue item's.
    Items of the ``<unknown>`` class (path too short) are left out; the test split is never read."""
    split = dataset.split()
    users = np.random.default_rng(0).permutation(dataset.n_users)[:VALID_USERS]
    table = torch.from_numpy(np.concatenate([np.zeros((1, sids.shape[1]), np.int64), sids]))
    trie = PrefixTrie(sids, generator.config.codebook_size)
    inputs = RankingInputs(generator, table, trie)
    histories = [split.valid_history[u] for u in users]
    top = full_ranking_top(inputs, histories, k=10, beam=beam, orderings=(ranking,), label="temperatures")
    items = top[ranking][top[ranking] >= 0]
    with torch.no_grad():
        logits = tokenizer.tag_logits_from_codes(torch.from_numpy(sids[items, : tokenizer.config.levels]))
    temperatures = []
    for level, level_logits in enumerate(logits):
        labels = dataset.tag_ids[items, level]
        known = labels > 0
        probs = level_logits.softmax(-1).numpy()[known]
        temperatures.append(round(fit_temperature(probs, labels[known]), 4) if known.any() else 1.0)
    return temperatures


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    command = provenance.command()
    torch.set_num_threads(1)
    generator, run_config, run_info = load_run(args.run)
    ranking = run_config.eval.ranking
    if ranking not in ("beam", "dot"):
        raise DataError(
            f"{args.run}: eval.ranking = {ranking!r}; the service ranks by 'beam' or 'dot' (retrain with one)"
        )
    if not generator.config.generative:
        raise DataError(
            f"{args.run}: a SASRec-style run (model.use_semantic=false) has no ID decoder to export"
        )
    data_dir = args.data or Path(run_info.get("data", ""))
    ids_dir = args.ids or Path(run_info.get("ids", ""))
    dataset = Dataset.load(data_dir)
    tokenizer, tokenizer_config = load_tokenizer(ids_dir)
    sids = np.load(args.run / "sids.npy", allow_pickle=False).astype(np.int64)
    if sids.shape[0] != dataset.n_items:
        raise DataError(
            f"{args.run / 'sids.npy'}: {sids.shape[0]} rows, {data_dir} has {dataset.n_items} items"
        )
    tag_ids = dataset.tag_ids
    catalogue = [
        CatalogueRow(item.item_id, item.title, list(item.category_path), tag_ids[i].tolist())
        for i, item in enumerate(dataset.items)
    ]
    metrics = {k: v for k, v in _read_json(args.run / "metrics.json").items() if k != "history"}
    metrics["tokenizer"] = {k: v for k, v in _read_json(ids_dir / "metrics.json").items() if k != "history"}
    temperatures = tag_temperatures(tokenizer, generator, ranking, args.beam, dataset, sids)
    metrics["tag_temperatures"] = temperatures
    configs = {
        "generator": _read_toml(args.run / "config.toml"),
        "tokenizer": _read_toml(ids_dir / "config.toml"),
        "data": _read_json(data_dir / "stats.json"),
        "sources": {
            "run": str(args.run.resolve()),
            "data": str(data_dir.resolve()),
            "ids": str(ids_dir.resolve()),
        },
    }
    manifest = export_bundle(
        BundleInputs(
            catalogue=catalogue,
            tag_levels=dataset.tags.levels,
            sids=sids,
            tokenizer=tokenizer,
            embedding_dim=tokenizer.input_dim - tokenizer_config.collaborative_dims,
            generator=generator,
            mode=tokenizer_config.model.mode,
            tag_temperatures=temperatures,
            configs=configs,
            metrics=metrics,
            decoding={"k": args.k, "beam": args.beam, "ranking": ranking},
            text_encoder=tokenizer_config.encoder,
            item_texts=dataset.item_texts(),
            text_cache_dir=data_dir / "cache",  # where ``python -m training tokenizer`` cached them
        ),
        args.out,
    )
    drift = parity(args.out, generator, dataset, sids)
    if drift > PARITY_ATOL:
        raise DataError(
            f"{args.out}: ONNX and torch logits differ by {drift:.2e} (> {PARITY_ATOL}); not exporting"
        )
    seconds = time.perf_counter() - started
    report = {
        "command": command,
        "bundle_id": manifest.bundle_id,
        "onnx_vs_torch_max_abs": drift,
        "seconds": seconds,
    }
    (args.out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / "config.toml").write_text(
        f'run = "{args.run}"\nk = {args.k}\nbeam = {args.beam}\n', encoding="utf-8"
    )
    print(
        f"\nbundle {manifest.bundle_id} -> {args.out}  ({seconds:.1f} s, ONNX vs torch |diff| <= {drift:.1e})"
    )
    print(f"{'file':<34}{'bytes':>12}  sha256")
    for spec in manifest.files().values():
        print(f"{spec.file:<34}{(args.out / spec.file).stat().st_size:>12,}  {spec.sha256[:16]}")
    print(f"\nserve it:  python -m service --bundle {args.out}")
    return 0
