"""The tokenizer's shape chosen from the data, where the config leaves it open.

``model.codebook_size`` (K) and ``model.levels`` (L) are chosen from the catalogue unless the config
file or a ``--set`` names them; an explicit value is always kept. Which tag levels supervise a code
level is read from the data in every case.

- **K** = the power of two at or above ``n_items / 48``, within [32, 256]: the first level splits the
  catalogue into cells of at most about 48 items (Amazon Beauty, 12,101 items: 256; the synthetic demo,
  about 3,000: 64). 256 is the ceiling because every decoding step scores ``beam × K`` codes.
- **L** = the number of tag levels that can supervise a code level, or more where the codes need
  it: at least enough levels that ``K ** L >= 16 × n_items``, so that few items share a tuple before
  disambiguation (Beauty: 3).
- **Supervised levels**: the leading tag levels with at least two known classes (``<other>``
  counts as one class, ``<unknown>`` as none). Code levels past them train without tag heads, on
  reconstruction, the quantiser and the uniqueness loss: they still serve the ID. A flat hierarchy
  (one genre) gives one supervised level; a catalogue without categories gives none.

The run's ``config.toml`` starts with one comment line per choice, and ``metrics.json`` holds them as
``shape_choices`` (the tokenizer's summary prints them).
"""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np

from training.config import parse_overrides
from training.errors import ConfigError
from training.tokenizer.ids import id_capacity
from training.tokenizer.train import TokenizerConfig, supervised_levels

__all__ = ["adapt_to_data", "choose_codebook_size", "choose_levels", "explicit_keys"]

#: items per first-level code that K aims at (Beauty's 12,101 items / 256 codes ~ 47)
ITEMS_PER_CODE = 48
#: K's range: 32 keeps the tiny catalogues' codes distinct enough, 256 bounds the cost of a decoding step
MIN_CODEBOOK, MAX_CODEBOOK = 32, 256
#: the code tuples (before disambiguation) can hold this many times the catalogue
TUPLE_HEADROOM = 16


def explicit_keys(path: Path | None, overrides: list[str]) -> set[str]:
    """Dotted keys (``model.levels``) that the config file or the overrides set."""
    values: dict[str, object] = {}
    if path is not None and path.is_file():
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    keys: set[str] = set()

    def walk(prefix: str, table: dict[str, object]) -> None:
        for key, value in table.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(f"{name}.", value)
            else:
                keys.add(name)

    walk("", values)
    walk("", parse_overrides(overrides))
    return keys


def choose_codebook_size(n_items: int) -> tuple[int, str]:
    target = -(-n_items // ITEMS_PER_CODE)
    k = min(max(1 << max(target - 1, 0).bit_length(), MIN_CODEBOOK), MAX_CODEBOOK)
    return k, (
        f"power of two >= {n_items:,} items / {ITEMS_PER_CODE}, within [{MIN_CODEBOOK}, {MAX_CODEBOOK}]"
    )


def choose_levels(n_items: int, codebook_size: int, supervised: int) -> tuple[int, str]:
    needed = 1
    while codebook_size**needed < TUPLE_HEADROOM * n_items:
        needed += 1
    levels = max(supervised, needed)
    return levels, (
        f"{supervised} supervisable tag level(s); {codebook_size}^{needed} >= "
        f"{TUPLE_HEADROOM} x {n_items:,} items needs {needed}"
    )


def adapt_to_data(
    config: TokenizerConfig, n_items: int, tags: np.ndarray, explicit: set[str]
) -> tuple[TokenizerConfig, list[str]]:
    """``config`` with K and L chosen from the data where not ``explicit``; one note per choice."""
    model = config.model
    notes: list[str] = []
    supervised = supervised_levels(tags)
    if "model.codebook_size" in explicit:
        notes.append(f"model.codebook_size = {model.codebook_size}: set by the config")
    else:
        k, why = choose_codebook_size(n_items)
        model = replace(model, codebook_size=k)
        notes.append(f"model.codebook_size = {k}: chosen from the data ({why})")
    if "model.levels" in explicit:
        notes.append(f"model.levels = {model.levels}: set by the config")
    else:
        levels, why = choose_levels(n_items, model.codebook_size, supervised)
        model = replace(model, levels=levels)
        notes.append(f"model.levels = {levels}: chosen from the data ({why})")
    used = min(supervised, model.levels) if model.mode == "hidvae" else 0
    untagged = {0: "", 1: f" (level {model.levels} trains without tags)"}.get(
        model.levels - used, f" (levels {used + 1}-{model.levels} train without tags)"
    )
    notes.append(f"tag-supervised code levels: {used} of {model.levels}{untagged}")
    capacity = id_capacity(model.levels, model.codebook_size)
    if n_items > capacity:
        raise ConfigError(
            f"{n_items:,} items need more IDs than model.levels = {model.levels} and "
            f"model.codebook_size = {model.codebook_size} give ({capacity:,}): raise one of them"
        )
    notes.append(
        f"disambiguation: one code of {model.codebook_size}; a fuller tuple moves its farthest items"
    )
    return replace(config, model=model), notes
