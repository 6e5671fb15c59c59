"""Readers: one module per raw format, each returning ``RawData``; ``read_source`` picks by name.

A source is ``FORMAT:PATH`` (e.g. ``sidrec:../shared/data/amazon-beauty``) or ``synthetic`` with
optional ``key=val`` settings of ``SyntheticConfig`` (``synthetic:n_items=500,seed=3``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from training.config import load_config
from training.data.raw import RawData
from training.data.readers.amazon2014 import read_amazon2014
from training.data.readers.movielens import read_movielens
from training.data.readers.p5 import read_p5
from training.data.readers.sidrec import read_sidrec
from training.data.readers.yelp import read_yelp
from training.data.synthetic import SyntheticConfig, generate_raw
from training.errors import DataError

__all__ = ["FORMATS", "read_source"]

#: format name -> reader of a path
READERS: dict[str, Callable[[Path], RawData]] = {
    "sidrec": read_sidrec,
    "amazon2014": read_amazon2014,
    "p5": read_p5,
    "movielens": read_movielens,
    "yelp": read_yelp,
}
FORMATS = [*READERS, "synthetic"]


def read_source(source: str) -> RawData:
    """Parse a ``--source`` value and read it."""
    name, _, rest = source.partition(":")
    if name == "synthetic":
        overrides = [pair for pair in rest.split(",") if pair.strip()]
        return generate_raw(load_config(SyntheticConfig, None, overrides))
    if name not in READERS:
        raise DataError(f"unknown source format {name!r} in {source!r}; known formats: {', '.join(FORMATS)}")
    if not rest:
        raise DataError(f"source {source!r} needs a path: {name}:PATH")
    path = Path(rest).expanduser()
    if not path.exists():
        raise DataError(f"source path {path} does not exist")
    return READERS[name](path)
