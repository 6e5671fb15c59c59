"""How far can a user trust an explanation? Fidelity, calibration and grounding of the served top-k.

  python -m benchmarks.explanations --bundle runs/beauty/bundle --data runs/beauty/data \\
      --text-probe benchmarks/results/text-probe-beauty.json \\
      --out benchmarks/results/explanations-beauty.json

The test users' histories (``Dataset.split().test_history``; ``--users`` samples them) are answered by
``service.recommender.Recommender`` itself, as the service answers them (its default beam, unseen
items only, batches of ``--batch``), and every served item's explanation is scored per tag level
against the catalogue's own class (``service.explanations.catalogue_classes``):

- ``fidelity``: of the served items whose catalogue names a class at the level, the share whose
  generated tag (the one the response shows) is that class. A level the path stops above counts as a
  miss.
- ``precision`` and ``coverage``: of the tags shown, the share that are the catalogue's class; the
  share of served items that show a tag at the level. ``head_accuracy``: the heads' raw argmax
  (``<other>`` included) against the catalogue class, where the catalogue has one.
- ``ece``: expected calibration error of the shown tags (confidence vs being the catalogue's class;
  10 equal-width bins) and the reliability diagram. ``temperature`` is fitted per level on the
  *validation* users' served items (``training.evaluate.calibration.fit_temperature``: NLL of the catalogue
  class over shown tags whose catalogue class is known), and ``ece_temperature_scaled`` is the test
  ECE with it: what a bundle carrying those temperatures would show. Scaling never changes a tag.
- ``grounded_share``: the share of served items with at least one history item (among those the model
  read) sharing an ID prefix with them (``service.explanations.ground``).
- ``placeholder_tags``: ``<unknown>``/``<other>`` tags in the served explanations (must be 0), beside
  ``placeholder_tags_raw_heads``: how many the heads' argmax holds, i.e. what showing it raw would give.

Writes JSON (with the command) and a PNG of the reliability diagrams next to it, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import load_bundle
from service.explanations import (
    OTHER_ID,
    UNKNOWN_ID,
    catalogue_classes,
    ground,
    is_placeholder,
)
from service.recommender import Query, Recommendation, Recommender
from training.data import Dataset
from training.evaluate.calibration import expected_calibration_error, fit_temperature, temperature_scale

__all__ = ["Served", "main", "score_level", "serve"]


@dataclass
class Served:
    """The served top-k of some users, flattened to one row per recommendation."""

    items: np.ndarray  # int64 (R,) catalogue rows
    shown: np.ndarray  # int64 (R, n_levels) class id of the tag shown at each level, -1 where none
    placeholders: int  # placeholder tags among the shown ones
    grounded: np.ndarray  # bool (R,) at least one history item shares an ID prefix
    shared_levels: np.ndarray  # int64 (R,)


def serve(recommender: Recommender, histories: list[list[int]], k: int, beam: int, batch: int) -> Served:
    """Answer every history as the service would, and read off what each answer shows."""
    n_levels = recommender.bundle.manifest.n_tag_levels
    t = recommender.history_length
    items, shown, grounded, shared = [], [], [], []
    placeholders = 0
    for start in range(0, len(histories), batch):
        chunk = histories[start : start + batch]
        answers: list[list[Recommendation]] = recommender.recommend(
            [Query(history=h, k=k, beam=beam) for h in chunk]
        )
        for history, hits in zip(chunk, answers, strict=True):
            found = ground(recommender.snapshot.sids, history[-t:], [h.item for h in hits])
            for hit, grounding in zip(hits, found, strict=True):
                items.append(hit.item)
                row = [-1] * n_levels
                for level, tag in enumerate(hit.tag_path):
                    row[level] = tag.class_id
                    placeholders += is_placeholder(tag.tag) or is_placeholder(tag.path)
                shown.append(row)
                grounded.append(bool(grounding.history))
                shared.append(grounding.shared_levels)
    return Served(
        np.asarray(items, dtype=np.int64),
        np.asarray(shown, dtype=np.int64).reshape(len(items), n_levels),
        placeholders,
        np.asarray(grounded, dtype=bool),
        np.asarray(shared, dtype=np.int64),
    )


def _level_probs(recommender: Recommender, items: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Head probabilities of each distinct served item: rows (U,) and per level (U, C_l)."""
    unique = np.unique(items)
    return unique, recommender.tag_probabilities(recommender.snapshot.sids[unique])


def score_level(
    level: int,
    served: Served,
    truth: np.ndarray,
    probs: np.ndarray,
    temperature: float,
) -> dict[str, Any]:
    """One level's figures for ``served`` (``truth``: the catalogue class of each served item at this
    level, (R,); ``probs``: the head's probabilities of each served item, (R, C))."""
    shown = served.shown[:, level]  # (R,)
    named = truth > OTHER_ID  # the catalogue names a class here
    has_tag = shown >= 0
    correct = shown == truth  # (R,); False where nothing is shown (shown = -1)
    known = truth != UNKNOWN_ID
    confidence = probs.max(axis=1)  # the shown tag's confidence (the shown tag is the argmax)
    scaled = temperature_scale(probs[has_tag], temperature).max(axis=1)
    ece, diagram = expected_calibration_error(confidence[has_tag], correct[has_tag])
    ece_scaled, diagram_scaled = expected_calibration_error(scaled, correct[has_tag])
    shows = bool(has_tag.any())  # no tag shown at this level: nothing to calibrate
    return {
        "named_in_catalogue": float(named.mean()),
        "coverage": float(has_tag.mean()),
        "fidelity": float(correct[named].mean()) if named.any() else None,
        "precision": float(correct[has_tag].mean()) if has_tag.any() else None,
        "head_accuracy": float((probs.argmax(axis=1) == truth)[known].mean()) if known.any() else None,
        "mean_confidence": float(confidence[has_tag].mean()) if has_tag.any() else None,
        "ece": ece if shows else None,
        "temperature": temperature,
        "ece_temperature_scaled": ece_scaled if shows else None,
        "reliability": diagram,
        "reliability_temperature_scaled": diagram_scaled,
    }


def _fit_temperatures(recommender: Recommender, served: Served, truth: np.ndarray) -> list[float]:
    """Per level, the temperature fitted on ``served`` (validation answers): NLL of the catalogue
    class over the shown tags whose catalogue class is known."""
    unique, probs = _level_probs(recommender, served.items)
    where = np.searchsorted(unique, served.items)
    out = []
    for level, p in enumerate(probs):
        use = (served.shown[:, level] >= 0) & (truth[:, level] != UNKNOWN_ID)
        out.append(fit_temperature(p[where[use]], truth[use, level]))
    return out


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = report["levels"]
    fig, axes = plt.subplots(1, len(levels), figsize=(4 * len(levels), 4), squeeze=False)
    for ax, row in zip(axes[0], levels, strict=True):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        for key, label in (
            ("reliability", "as served"),
            ("reliability_temperature_scaled", "temperature-scaled"),
        ):
            bins = row[key]
            total = sum(b["count"] for b in bins) or 1
            x, y = [b["confidence"] for b in bins], [b["accuracy"] for b in bins]
            (line,) = ax.plot(x, y, label=label, linewidth=1)
            size = [4 + 200 * b["count"] / total for b in bins]  # marker area: the bin's share of tags
            ax.scatter(x, y, s=size, color=line.get_color(), zorder=3)
        ece = "no tag shown" if row["ece"] is None else f"ECE {row['ece']:.3f}"
        if row["ece"] is not None:
            ece += f" -> {row['ece_temperature_scaled']:.3f} (T={row['temperature']:.2f})"
        ax.set_title(f"level {row['level']}: fidelity {row['fidelity'] or 0:.2f}\n{ece}", fontsize=9)
        ax.set_xlabel("confidence of the shown tag")
        ax.set_ylabel("share that is the catalogue's class")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _histories(dataset: Dataset, split: str, users: np.ndarray) -> list[list[int]]:
    source = dataset.split().test_history if split == "test" else dataset.split().valid_history
    return [source[u].tolist() for u in users if len(source[u])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.explanations",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bundle", type=Path, required=True, help="a bundle directory")
    parser.add_argument(
        "--data", type=Path, required=True, help="the prepared dataset the bundle was built on"
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON report (the PNG goes beside it)")
    parser.add_argument("--users", type=int, default=0, help="test users to sample (default 0: all)")
    parser.add_argument("--k", type=int, default=10, help="recommendations per user (default 10)")
    parser.add_argument("--beam", type=int, help="beam width (default: the service's, max(bundle beam, k))")
    parser.add_argument("--batch", type=int, default=64, help="requests per Recommender call (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the user sample")
    parser.add_argument(
        "--text-probe", type=Path, help="a benchmarks.text_probe report: its ceiling per level"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()

    recommender = Recommender(load_bundle(args.bundle, ["CPUExecutionProvider"]))
    catalogue = recommender.bundle.catalogue
    dataset = Dataset.load(args.data)
    if catalogue.item_ids[: dataset.n_items] != [item.item_id for item in dataset.items]:
        print(f"error: {args.bundle} was not built on {args.data} (catalogue rows differ)", file=sys.stderr)
        return 2
    beam = args.beam or max(recommender.bundle.manifest.decoding.beam, args.k)
    n_users = len(dataset.user_ids)
    rng = np.random.default_rng(args.seed)
    users = (
        np.arange(n_users)
        if args.users <= 0
        else np.sort(rng.choice(n_users, min(args.users, n_users), False))
    )
    levels = recommender.bundle.tag_levels[: recommender.bundle.manifest.n_tag_levels]
    classes = catalogue_classes(catalogue.category_paths, levels)  # (n_items, n_levels)

    valid = serve(recommender, _histories(dataset, "valid", users), args.k, beam, args.batch)
    temperatures = _fit_temperatures(recommender, valid, classes[valid.items])
    test_histories = _histories(dataset, "test", users)
    served = serve(recommender, test_histories, args.k, beam, args.batch)
    unique, probs = _level_probs(recommender, served.items)
    where = np.searchsorted(unique, served.items)  # (R,) row of each served item in ``unique``
    rows = []
    for level in range(len(levels)):
        row = score_level(
            level, served, classes[served.items, level], probs[level][where], temperatures[level]
        )
        rows.append({"level": level + 1, **row})
    raw_placeholders = int(sum((p[where].argmax(axis=1) <= OTHER_ID).sum() for p in probs))
    ceiling = None
    if args.text_probe is not None:
        probe = json.loads(args.text_probe.read_text())
        ceiling = [max(r["tag_accuracy"][lvl] for r in probe["probes"]) for lvl in range(len(levels))]

    report: dict[str, Any] = {
        "command": shlex.join(
            ["python", "-m", "benchmarks.explanations", *(sys.argv[1:] if argv is None else argv)]
        ),
        "bundle_id": recommender.bundle.bundle_id,
        "data": str(args.data),
        "users": len(test_histories),
        "recommendations": int(served.items.shape[0]),
        "distinct_items": int(unique.shape[0]),
        "k": args.k,
        "beam": beam,
        "fidelity": [r["fidelity"] for r in rows],
        "ece": [r["ece"] for r in rows],
        "ece_temperature_scaled": [r["ece_temperature_scaled"] for r in rows],
        "temperature": temperatures,
        "precision": [r["precision"] for r in rows],
        "coverage": [r["coverage"] for r in rows],
        "head_accuracy": [r["head_accuracy"] for r in rows],
        "text_probe_ceiling": ceiling,
        "grounded_share": float(served.grounded.mean()) if served.items.size else None,
        "shared_levels_histogram": np.bincount(served.shared_levels).tolist(),
        "placeholder_tags": served.placeholders,
        "placeholder_tags_raw_heads": raw_placeholders,
        "levels": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, args.out.with_suffix(".png"))
    _print(report)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


def _print(report: dict[str, Any]) -> None:
    def fmt(value: float | None) -> str:
        return "    -" if value is None else f"{value:5.3f}"

    print(
        f"{report['recommendations']:,} recommendations (top-{report['k']}, beam {report['beam']}) "
        f"for {report['users']:,} test users, bundle {report['bundle_id']}"
    )
    print("level  named  shown  fidelity  precision  head acc  probe  conf   ECE      T  ECE(T)")
    ceiling = report["text_probe_ceiling"] or [None] * len(report["levels"])
    for row, probe in zip(report["levels"], ceiling, strict=True):
        print(
            f"{row['level']:>5}  {row['named_in_catalogue']:5.3f}  {row['coverage']:5.3f}  "
            f"{fmt(row['fidelity']):>8}  {fmt(row['precision']):>9}  {fmt(row['head_accuracy']):>8}  "
            f"{fmt(probe)}  {fmt(row['mean_confidence'])}  {fmt(row['ece'])}  {row['temperature']:5.2f}  "
            f"{fmt(row['ece_temperature_scaled']):>6}"
        )
    print(
        f"grounded: {fmt(report['grounded_share'])} of recommendations share an ID prefix with a history "
        f"item; placeholder tags shown: {report['placeholder_tags']} "
        f"(the heads' raw argmax holds {report['placeholder_tags_raw_heads']:,})"
    )


if __name__ == "__main__":
    raise SystemExit(main())
