"""Read a raw dataset and write the canonical dataset + stats.json (docs/CONTRACTS.md §1).

Sources (``--source``):
  sidrec:DIR       items.jsonl + interactions.tsv (the format of ../shared/data, see its README)
  amazon2014:PATH  reviews_<Cat>_5.json.gz + meta_<Cat>.json.gz: their folder, or the reviews file
  p5:DIR           sequential_data.txt (+ datamaps.json) of P5 / S3-Rec
  movielens:DIR    u.data + u.item (100k) or ratings.dat + movies.dat (1M); a film's genres, most
                   common first, are its tag path
  yelp:DIR         yelp_academic_dataset_{business,review}.json; categories as for MovieLens
  synthetic[:k=v,...]  the demo shop; keys are SyntheticConfig fields (training/data/synthetic.py),
                       e.g. synthetic:n_items=500,n_users=800,seed=1

What prepare does with data as found in the wild (every count is in stats.json "dropped" and printed):
  no timestamps       sidrec's interactions.tsv may have the header user_id<TAB>item_id alone, and p5
                      has none: file order is the order
  repeats             an interaction with the user's previous item is dropped (--keep-repeats keeps it)
  short users         fewer than --min-user-items (3) interactions: dropped; --kcore K also drops
                      users and items under K (off by default: a rare item still gets an ID from its text)
  long histories      kept whole; the generator reads each user's most recent model.max_len items, and
                      evaluation scores the true next item with every earlier item excluded
  items without text  the encoder reads "item <id>" (Item.text); no category path = no tag
  malformed lines     an error naming the file and the line

Examples:
  python -m training prepare --source sidrec:../shared/data/amazon-beauty --out runs/beauty/data
  python -m training prepare --source synthetic --out runs/demo/data
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from training import provenance
from training.config import config_to_dict, dump_toml
from training.data.raw import BuildOptions, build_dataset
from training.data.readers import read_source

__all__ = ["PrepareConfig", "add_arguments", "run"]


@dataclass(frozen=True)
class PrepareConfig:
    """The effective settings of one ``prepare`` run (written to ``config.toml``)."""

    source: str
    out: str
    build: BuildOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source", default="synthetic", help="FORMAT:PATH or synthetic[:key=val,...] (default: synthetic)"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder for the canonical dataset")
    parser.add_argument(
        "--tag-levels", type=int, default=3, help="tag levels below the category root (default: 3)"
    )
    parser.add_argument(
        "--min-tag-count",
        type=int,
        default=None,
        help="classes with fewer items merge into <other> (default: 30, or one item in 80 of a smaller "
        "catalogue, at least 2)",
    )
    parser.add_argument(
        "--kcore",
        type=int,
        default=0,
        help="iterative k-core filter on users and items; 0 = off (default: 0)",
    )
    parser.add_argument(
        "--min-user-items",
        type=int,
        default=3,
        help="drop users with fewer interactions; leave-one-out needs 3 (default: 3)",
    )
    parser.add_argument(
        "--keep-repeats",
        action="store_true",
        help="keep an interaction that repeats the user's previous item (default: drop it)",
    )


def _table(rows: list[tuple[str, Any]]) -> str:
    width = max(len(name) for name, _ in rows)
    lines = []
    for name, value in rows:
        if isinstance(value, int):
            text = f"{value:,}"
        elif isinstance(value, float):
            text = f"{value:.4g}"
        elif isinstance(value, list):
            text = " / ".join(f"{v:,}" if isinstance(v, int) else f"{v:.3g}" for v in value)
        else:
            text = str(value)
        lines.append(f"  {name:<{width}}  {text}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    config = PrepareConfig(
        source=args.source,
        out=str(args.out),
        build=BuildOptions(
            tag_levels=args.tag_levels,
            min_tag_count=args.min_tag_count,
            kcore=args.kcore,
            min_user_items=args.min_user_items,
            drop_repeats=not args.keep_repeats,
        ),
    )
    started = time.perf_counter()
    raw = read_source(config.source)
    dataset, dropped = build_dataset(raw, config.build)
    out = Path(config.out)
    command = provenance.command()
    extra = {
        "source": config.source,
        "dropped": dropped,
        "reader_notes": raw.notes,
        "command": command,
        "seconds": round(time.perf_counter() - started, 2),
    }
    dataset.save(out, extra_stats=extra)
    stats = json.loads((out / "stats.json").read_text())
    (out / "metrics.json").write_text(json.dumps(stats, indent=2) + "\n")
    chosen = ""
    if config.build.min_tag_count is None:  # write what the data chose, and why
        config = replace(config, build=replace(config.build, min_tag_count=dataset.tags.min_count))
        chosen = (
            f"# build.min_tag_count = {dataset.tags.min_count}: chosen from the data "
            f"(min(30, max(2, {dataset.n_items:,} items // 80)))\n"
        )
    (out / "config.toml").write_text(chosen + dump_toml(config_to_dict(config)))

    rows: list[tuple[str, Any]] = [
        ("source", config.source),
        ("users", stats["users"]),
        ("items", stats["items"]),
        ("interactions", stats["interactions"]),
        ("avg / min / max seq len", [stats["avg_seq_len"], stats["min_seq_len"], stats["max_seq_len"]]),
        ("tag classes per level", stats["tag_classes_per_level"]),
        ("  min items per class", stats["tag_min_count"]),
        ("  <unknown> share", stats["tag_unknown_fraction_per_level"]),
        ("  <other> share", stats["tag_other_fraction_per_level"]),
        ("tail items (80 % least popular)", stats["tail_fraction"]),
        (
            "tail share of train / test",
            [stats["tail_train_interaction_share"], stats["tail_test_target_share"]],
        ),
    ]
    rows += [(f"reader: {reason}", count) for reason, count in raw.notes.items() if count]
    rows += [(f"dropped: {reason}", count) for reason, count in dropped.items() if count]
    rows.append(("written to", str(out)))
    print(f"prepared in {stats['seconds']:.1f} s\n{_table(rows)}")
    return 0
