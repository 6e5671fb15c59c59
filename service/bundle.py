"""Load a bundle directory into memory, verifying it against its manifest first.

``load_bundle`` is the only reader of bundle files on the serving side. It checks every file's
sha256, opens each ONNX graph with explicit providers, and checks the graph's input/output names and
the ``bundle_id`` stamped into its metadata, so a bundle assembled from two exports (or edited by
hand) is refused with a ``BundleError`` naming the file, before any request is served.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.errors import BundleError
from service.layout import cpu_limit
from service.manifest import Manifest, load_manifest
from service.prefix_index import PrefixIndex
from service.text_encoder import TfidfSvdTextEncoder

__all__ = ["Catalogue", "LoadedBundle", "Pace", "available_providers", "load_bundle"]

log = logging.getLogger("sidrec.bundle")


@dataclass
class Catalogue:
    """The item rows the service shows; ``index`` of an item is its row (CONTRACTS conventions)."""

    item_ids: list[str]
    titles: list[str]
    category_paths: list[list[str]]
    tag_ids: np.ndarray  # int64 (n_items, n_tag_levels)
    position: dict[str, int]  # item_id -> row

    @classmethod
    def read(cls, path: Path, n_items: int) -> Catalogue:
        item_ids, titles, paths, tags = [], [], [], []
        with path.open(encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, 1):
                try:
                    row = json.loads(line)
                    if row["index"] != line_no - 1:
                        raise ValueError(f"index {row['index']} on line {line_no}")
                    item_ids.append(str(row["item_id"]))
                    titles.append(str(row["title"]))
                    # interned: the few distinct path components are shared by every row
                    paths.append([sys.intern(str(p)) for p in row["category_path"]])
                    tags.append([int(t) for t in row["tags"]])
                except (ValueError, KeyError, TypeError) as exc:
                    raise BundleError(f"{path}:{line_no}: bad catalogue row ({exc})") from exc
        if len(item_ids) != n_items:
            raise BundleError(f"{path}: {len(item_ids)} rows, the manifest says {n_items} items")
        return cls(
            item_ids, titles, paths, np.array(tags, dtype=np.int64), {i: n for n, i in enumerate(item_ids)}
        )

    def append(self, item_id: str, title: str, category_path: list[str], tags: list[int]) -> int:
        """Add a cold-start item as a new row and return its index; levels without a tag head are 0."""
        index = len(self.item_ids)
        self.item_ids.append(item_id)
        self.titles.append(title)
        self.category_paths.append(category_path)
        width = self.tag_ids.shape[1]
        row = np.array([(tags + [0] * width)[:width]], dtype=np.int64)  # (1, n_tag_levels), 0 = unknown
        self.tag_ids = np.concatenate([self.tag_ids, row])
        self.position[item_id] = index
        return index


@dataclass
class LoadedBundle:
    path: Path
    manifest: Manifest
    sessions: dict[str, ort.InferenceSession]
    provider: str  # the provider the graphs actually run on
    sids: np.ndarray  # int64 (n_items, D)
    tag_levels: list[list[str]]
    catalogue: Catalogue
    item_table: np.ndarray | None = None  # float32 (n_items, item_dim) when the bundle ranks by "dot"
    text_encoder: TfidfSvdTextEncoder | None = None  # item text -> the tokenizer's input, if carried

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id


def available_providers(requested: list[str]) -> list[str]:
    """The requested providers this onnxruntime build has, in the requested order (CPU always last)."""
    have = set(ort.get_available_providers())
    chosen = [p for p in requested if p in have]
    return chosen if "CPUExecutionProvider" in chosen else [*chosen, "CPUExecutionProvider"]


def _no_pause() -> None:
    pass


def _session(path: Path, providers: list[str], threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle workers sleep instead of spinning: between the many small step calls a spinning pool takes
    # the cores that the event loop (and, in a load test, the client) need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad graphs
        raise BundleError(f"{path}: onnxruntime cannot load it ({exc})") from exc


class Pace:
    """Keeps the calling thread to ``share`` of a CPU: each call sleeps in proportion to the CPU time
    the thread used since the previous one. A reload loads beside the serving: unpaced it takes half
    a busy core while it runs, and near the rated load the requests meanwhile find the service full.
    Not a lower OS priority: a thread holding the GIL that other processes keep off the CPU would
    stop the event loop too."""

    def __init__(self, share: float) -> None:
        self.rest = 1 / share - 1  # seconds asleep per second of CPU
        self._mark = time.thread_time()

    def __call__(self) -> None:
        time.sleep((time.thread_time() - self._mark) * self.rest)
        self._mark = time.thread_time()


def load_bundle(
    path: Path,
    providers: list[str],
    threads: int | None = None,
    pause: Callable[[], None] | None = None,
    serving: LoadedBundle | None = None,
) -> LoadedBundle:
    """Verify and load the bundle at ``path``; raises ``BundleError`` naming what does not match.

    ``pause``: called between two pieces of the work (``Pace``). ``serving``: the bundle being served,
    whose text encoder (by far the largest table, shared by the bundles of one tokenizer) is taken
    rather than read again when both manifests give it the same sha256; the file is still hashed.
    """
    pause = pause or _no_pause
    manifest = load_manifest(path, verify=False)
    manifest.verify_files(path, pause)
    chosen = available_providers(providers)
    sessions = {}
    for name, graph in manifest.graphs.items():
        pause()
        session = _session(path / graph.file, chosen, threads or cpu_limit())
        graph.check_io(name, [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        stamped = session.get_modelmeta().custom_metadata_map.get("bundle_id")
        if stamped != manifest.bundle_id:
            raise BundleError(
                f"{path / graph.file}: graph carries bundle_id {stamped!r}, manifest {manifest.bundle_id!r}"
            )
        sessions[name] = session
    pause()
    provider = sessions["generator_step"].get_providers()[0]
    try:
        sids = np.load(path / manifest.tables["sids"].file, allow_pickle=False)
        tags = json.loads((path / manifest.tables["tags"].file).read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise BundleError(f"{path}: unreadable table ({exc})") from exc
    spec = manifest.id_spec
    if sids.shape != (manifest.n_items, spec.id_length) or sids.dtype != np.int64:
        raise BundleError(
            f"{path}/sids.npy: {sids.dtype} {sids.shape}, "
            f"expected int64 ({manifest.n_items}, {spec.id_length})"
        )
    pause()
    index = PrefixIndex.load(path / manifest.tables["prefix_index"].file)
    if index.n_items != manifest.n_items or index.codebook_size != spec.codebook_size:
        raise BundleError(f"{path}/prefix_index.npz does not match the manifest's ID spec")
    pause()
    catalogue = Catalogue.read(path / manifest.tables["catalogue"].file, manifest.n_items)
    pause()
    item_table = None
    if "item_table" in manifest.tables:
        try:
            item_table = np.load(path / manifest.tables["item_table"].file, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise BundleError(f"{path}: unreadable item table ({exc})") from exc
        if item_table.ndim != 2 or item_table.shape[0] != manifest.n_items or item_table.dtype != np.float32:
            raise BundleError(
                f"{path}/{manifest.tables['item_table'].file}: {item_table.dtype} {item_table.shape}, "
                f"expected float32 ({manifest.n_items}, item_dim)"
            )
    text_encoder = None
    encoder_file = manifest.tables.get("text_encoder")
    if encoder_file is not None:
        served = serving.manifest.tables.get("text_encoder") if serving is not None else None
        if serving is not None and served is not None and served.sha256 == encoder_file.sha256:
            text_encoder = serving.text_encoder  # the same bytes, already loaded (and never changed)
        else:
            pause()
            text_encoder = TfidfSvdTextEncoder.load(path / encoder_file.file)
        if text_encoder is not None and text_encoder.dim != manifest.embedding_dim:
            raise BundleError(
                f"{path}/{encoder_file.file}: embeds into {text_encoder.dim} "
                f"dimensions, the tokenizer reads {manifest.embedding_dim}"
            )
    pause()
    log.info("loaded bundle %s from %s on %s", manifest.bundle_id, path, provider)
    return LoadedBundle(
        path, manifest, sessions, provider, sids, tags["levels"], catalogue, item_table, text_encoder
    )
