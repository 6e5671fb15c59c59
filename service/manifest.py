"""The bundle manifest: the one contract shared by export (writes it) and the service (verifies it).

A bundle is a directory that holds everything the service reads. ``manifest.json`` lists every file
with its sha256, describes each ONNX graph's inputs and outputs, and freezes the facts that would
otherwise live in prose (ID length, codebook size, where the disambiguation code sits, the history
length the generator was exported for). The service verifies all of it at load and refuses to serve
a bundle that does not match, so a half-copied or hand-edited bundle fails loudly at start-up
instead of recommending garbage.

This module depends only on pydantic and the standard library: ``training/`` imports it to write
bundles and ``service/`` imports it to read them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.errors import BundleError

__all__ = [
    "DOT_GRAPH_NAMES",
    "DOT_TABLE_NAMES",
    "FAST_PATH_GRAPH_NAMES",
    "GRAPH_NAMES",
    "MANIFEST_FILE",
    "OPTIONAL_TABLE_NAMES",
    "SCHEMA_VERSION",
    "DecodingDefaults",
    "FileSpec",
    "GraphSpec",
    "IdSpec",
    "Manifest",
    "TensorSpec",
    "load_manifest",
    "sha256_file",
]

#: 2: the fast path became incremental (``generator_step_incremental``); 3: its step returns only the
#: newest position's keys/values (``newest``) instead of the whole cache (``present``). Older versions
#: are still read (see below).
SCHEMA_VERSION: Final = 3
MANIFEST_FILE = "manifest.json"

#: Graph names every bundle carries (see docs/CONTRACTS.md §4).
GRAPH_NAMES = ("tokenizer", "tag_heads", "generator_encoder", "generator_step")
#: The fast path by schema version: all or none of a version's graphs (``generator_step`` stays the
#: reference). An older bundle's fast path is verified like any graph but not used (this service
#: decodes such a bundle with the reference step graph).
FAST_PATH_GRAPH_NAMES = {
    1: ("generator_cross_kv", "generator_step_cached"),
    2: ("generator_cross_kv", "generator_step_incremental"),
    3: ("generator_cross_kv", "generator_step_incremental"),
}
#: Plain files every bundle carries besides the graphs.
TABLE_NAMES = ("sids", "prefix_index", "tags", "catalogue")
#: What a bundle that ranks by the dot-product head (``decoding.ranking == "dot"``) carries besides:
#: the user-vector and cold-item graphs, and the item vectors of the catalogue.
DOT_GRAPH_NAMES = ("generator_user", "item_vectors")
DOT_TABLE_NAMES = ("item_table",)
#: Tables a bundle may carry: ``text_encoder`` (the tokenizer's TF-IDF + SVD text encoder as arrays,
#: for cold start by text: ``service.text_encoder``).
OPTIONAL_TABLE_NAMES = ("text_encoder",)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    """One graph input or output; symbolic dimensions are strings (e.g. ``"batch"``)."""

    name: str
    dtype: Literal["float32", "int64", "bool"]
    shape: list[int | str]


class FileSpec(_Strict):
    """A file of the bundle and its checksum."""

    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class GraphSpec(FileSpec):
    """An ONNX graph: its file, checksum, opset, and the exact input/output signature."""

    opset: int = Field(ge=7)
    exporter: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def check_io(self, graph: str, input_names: Sequence[str], output_names: Sequence[str]) -> None:
        """Raise ``BundleError`` unless a loaded graph has exactly the declared inputs and outputs."""
        for kind, declared, actual in (
            ("inputs", [t.name for t in self.inputs], list(input_names)),
            ("outputs", [t.name for t in self.outputs], list(output_names)),
        ):
            if declared != actual:
                raise BundleError(
                    f"{self.file}: graph {graph!r} has {kind} {actual}, the manifest declares {declared}"
                )


class IdSpec(_Strict):
    """Shape of a semantic ID: ``levels`` tag-aligned codes plus one disambiguation code.

    ``token_offsets[l]`` is where level ``l``'s codes start in a flat token vocabulary of size
    ``id_length * codebook_size`` (code ``c`` at level ``l`` is token ``token_offsets[l] + c``), for
    consumers that flatten IDs into one vocabulary.
    """

    levels: int = Field(ge=1)
    codebook_size: int = Field(ge=2)
    id_length: int
    disambiguation_level: int
    token_offsets: list[int]
    mode: str = "hidvae"

    @model_validator(mode="after")
    def _consistent(self) -> IdSpec:
        if self.id_length != self.levels + 1 or self.disambiguation_level != self.levels:
            raise ValueError("id_length must be levels + 1 and disambiguation_level must be levels")
        if self.token_offsets != [lvl * self.codebook_size for lvl in range(self.id_length)]:
            raise ValueError("token_offsets must be [l * codebook_size for each ID level]")
        return self


class DecodingDefaults(_Strict):
    """Default and maximum request sizes; the service enforces the maxima and documents them."""

    k: int = 10
    beam: int = 20
    max_k: int = 100
    max_beam: int = 100
    history_length: int = Field(ge=1, description="T: histories are left-padded/truncated to it")
    max_tag_filter_depth: int = Field(ge=0)
    ranking: Literal["beam", "dot"] = Field(
        "beam",
        description="how items are ranked: the constrained beam over semantic IDs, or the dual-branch "
        "dot-product head scoring every item (chosen on validation when the run was trained)",
    )

    @model_validator(mode="after")
    def _ordered(self) -> DecodingDefaults:
        if not (1 <= self.k <= self.max_k and 1 <= self.beam <= self.max_beam and self.k <= self.max_beam):
            raise ValueError("need 1 <= k <= max_k, 1 <= beam <= max_beam and k <= max_beam")
        return self


class Manifest(_Strict):
    """Everything the service needs to know about a bundle before trusting it."""

    schema_version: Literal[1, 2, 3] = SCHEMA_VERSION
    bundle_id: str = Field(min_length=1)
    created_at: str
    git_sha: str
    n_items: int = Field(ge=1)
    n_tag_levels: int = Field(ge=0)
    embedding_dim: int = Field(ge=1, description="input width of tokenizer.onnx")
    id_spec: IdSpec
    graphs: dict[str, GraphSpec]
    tables: dict[str, FileSpec]
    decoding: DecodingDefaults
    configs: dict[str, Any] = Field(description="frozen configs of every stage that built the bundle")
    metrics: dict[str, Any] = Field(default_factory=dict, description="evaluation metrics of the run")

    @model_validator(mode="after")
    def _complete(self) -> Manifest:
        dot = self.decoding.ranking == "dot"
        graph_names = GRAPH_NAMES + (DOT_GRAPH_NAMES if dot else ())
        table_names = TABLE_NAMES + (DOT_TABLE_NAMES if dot else ())
        for names, have, kind in ((graph_names, self.graphs, "graphs"), (table_names, self.tables, "tables")):
            missing = [n for n in names if n not in have]
            if missing:
                raise ValueError(f"{kind} is missing {missing}")
        fast_path = FAST_PATH_GRAPH_NAMES[self.schema_version]
        unknown = sorted(set(self.graphs) - set(graph_names) - set(fast_path))
        if unknown:
            raise ValueError(f"graphs has unknown entries {unknown}")
        unknown = sorted(set(self.tables) - set(table_names) - set(OPTIONAL_TABLE_NAMES))
        if unknown:
            raise ValueError(f"tables has unknown entries {unknown}")
        if 0 < sum(n in self.graphs for n in fast_path) < len(fast_path):
            raise ValueError(f"graphs must hold all of {list(fast_path)} or none")
        return self

    @property
    def has_kv_cache(self) -> bool:
        """Whether the bundle has the fast path this service decodes with (the current version's)."""
        return self.schema_version == SCHEMA_VERSION and all(
            n in self.graphs for n in FAST_PATH_GRAPH_NAMES[SCHEMA_VERSION]
        )

    def files(self) -> dict[str, FileSpec]:
        """Every file of the bundle by its logical name."""
        return {**self.graphs, **self.tables}

    def verify_files(self, bundle_dir: Path, pause: Callable[[], None] | None = None) -> None:
        """Raise ``BundleError`` naming the first file that is missing or fails its sha256."""
        for name, spec in self.files().items():
            path = bundle_dir / spec.file
            if not path.is_file():
                raise BundleError(f"{path}: missing ({name} is listed in {MANIFEST_FILE})")
            digest = sha256_file(path, pause)
            if digest != spec.sha256:
                raise BundleError(
                    f"{path}: sha256 {digest[:12]}… does not match the manifest's {spec.sha256[:12]}…"
                )

    def write(self, bundle_dir: Path) -> Path:
        path = bundle_dir / MANIFEST_FILE
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
        return path


def sha256_file(path: Path, pause: Callable[[], None] | None = None) -> str:
    """Hex sha256 of a file, read in chunks so large graphs do not load into memory twice (``pause``
    after each: ``service.bundle.Pace``)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            if pause is not None:
                pause()
    return digest.hexdigest()


def load_manifest(bundle_dir: Path, verify: bool = True) -> Manifest:
    """Read and validate ``bundle_dir/manifest.json``; with ``verify`` also check every file's sha256."""
    path = bundle_dir / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{path}: no manifest (is {bundle_dir} a bundle directory?)")
    try:
        raw = json.loads(path.read_bytes())
    except (ValueError, OSError) as exc:
        raise BundleError(f"{path}: not readable JSON ({exc})") from exc
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise BundleError(
            f"{path}: schema_version {version} is newer than this service understands ({SCHEMA_VERSION}); "
            "upgrade the service or export with a matching version"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise BundleError(f"{path}: field {field}: {first['msg']}") from exc
    if verify:
        manifest.verify_files(bundle_dir)
    return manifest
