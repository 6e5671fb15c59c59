"""The serving core: histories in, explained recommendations out, for a whole batch at once.

``Recommender`` owns the loaded bundle and runs its graphs the way serving needs them: the encoder
once per request (``(B, T)`` histories), the decoder graphs over batch × beam inside
``ConstrainedBeamSearch`` (``service.decoders``: the incremental fast path when the bundle has it,
else the reference step graph), and the tag heads once over the whole catalogue (and once per
cold-start item) to explain every item ahead of time. A bundle whose run ranked best by the
dual-branch dot-product head (``decoding.ranking == "dot"``) is answered by that head scoring every
item instead of the beam: one small graph for the user vector and one matrix product with the
catalogue's item vectors; the returned items keep their IDs and tag paths all the same. It knows
nothing of HTTP, queues or Redis, so tests and the benchmark drive it directly.

Cold-start items (``tokenize``, ``insert_item``) are tokenised by ``tokenizer.onnx``, get the smallest free
disambiguation code under their tuple, and enter a new ``CatalogueSnapshot`` (SID table, prefix
index, tag-path filter map, item vectors) that is swapped in atomically: a batch that is already
decoding keeps the snapshot it started with.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.beam_search import BeamHit, ConstrainedBeamSearch, Steps, log_softmax, run_to_end
from service.bundle import LoadedBundle
from service.constraints import AllowedItems, ExcludeItems, Processor
from service.decoders import Decoder, IncrementalDecoder, ReferenceDecoder
from service.errors import InvalidRequest
from service.explanations import TagScore, catalogue_classes, read_tag_paths, with_agreement
from service.prefix_index import PrefixIndex

__all__ = ["ENCODER_GROUP", "CatalogueSnapshot", "Query", "Recommendation", "Recommender", "TagScore"]

#: histories per encoder call when a batch is grouped by length (see ``Recommender.encode``)
ENCODER_GROUP = 16
#: IDs per tag-heads call when a whole catalogue is explained: the (rows, classes) probabilities of
#: every level, and onnxruntime's arena that keeps their peak, stay small at any catalogue size, and a
#: reload's ``Pace`` gets a turn every few milliseconds of that work
EXPLAIN_ROWS = 1024
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Query:
    """One recommendation request with ids already resolved to catalogue rows."""

    history: list[int]  # rows, oldest first; only the last ``history_length`` are used
    k: int
    beam: int
    exclude_seen: bool = True
    tag_path: list[str] | None = None
    explain: bool = True
    grounding: bool = False  # answered from the ID table after decoding (``service.explanations.ground``)


@dataclass(frozen=True)
class Recommendation:
    item: int
    score: float
    codes: tuple[int, ...]
    tag_path: list[TagScore] = field(default_factory=list)


@dataclass(frozen=True)
class CatalogueSnapshot:
    """The decodable catalogue at one moment; replaced (never mutated) when an item is added."""

    sids: np.ndarray  # int64 (n_items, D)
    index: PrefixIndex
    by_path: dict[tuple[str, ...], np.ndarray]  # category-path prefix (with or without root) -> rows
    explanations: list[list[TagScore]]  # per row: its tag path read from the tag heads (see ``explain``)
    item_vectors: np.ndarray | None = None  # float32 (n_items, item_dim): the dot-product head's items

    @classmethod
    def build(
        cls,
        sids: np.ndarray,
        codebook_size: int,
        paths: list[list[str]],
        explanations: list[list[TagScore]],
        item_vectors: np.ndarray | None = None,
    ) -> CatalogueSnapshot:
        rows_of_path: dict[tuple[str, ...], list[int]] = defaultdict(list)  # the few distinct paths
        for row, path in enumerate(paths):
            rows_of_path[tuple(path)].append(row)
        groups: dict[tuple[str, ...], list[list[int]]] = defaultdict(list)
        for full, rows in rows_of_path.items():
            keys = {full[:n] for n in range(1, len(full) + 1)}
            keys |= {full[1:n] for n in range(2, len(full) + 1)}  # the root may be left out
            for key in keys:
                groups[key].append(rows)
        by_path = {  # rows ascending
            key: np.sort(np.concatenate([np.asarray(rows, dtype=np.int64) for rows in parts]))
            for key, parts in groups.items()
        }
        return cls(sids, PrefixIndex.build(sids, codebook_size), by_path, explanations, item_vectors)

    @property
    def n_items(self) -> int:
        return int(self.sids.shape[0])


class Recommender:
    """Batched, constrained, explained recommendation over one loaded bundle."""

    def __init__(
        self,
        bundle: LoadedBundle,
        kv_cache: bool = True,
        clock: Callable[[], float] = time.perf_counter,
        pause: Callable[[], None] | None = None,
    ) -> None:
        """``kv_cache``: decode with the bundle's incremental (K/V-cached) graphs when it has them;
        ``clock``: what ``recommend``'s ``on_step`` durations are read from (``ConstrainedBeamSearch``);
        ``pause``: called between slices of the catalogue's explanation (a reload's ``Pace``)."""
        self.bundle = bundle
        self.clock = clock
        self.kv_cache = kv_cache and bundle.manifest.has_kv_cache
        spec = bundle.manifest.id_spec
        self.history_length = bundle.manifest.decoding.history_length
        encoder = bundle.manifest.graphs["generator_encoder"]
        self.trim_history = isinstance(encoder.inputs[0].shape[1], str)  # dynamic history axis
        self.d_model = int(encoder.outputs[0].shape[2])
        self.levels = spec.levels
        self.codebook_size = spec.codebook_size
        self.max_filter_depth = bundle.manifest.decoding.max_tag_filter_depth
        self.ranking = bundle.manifest.decoding.ranking
        paths = bundle.catalogue.category_paths
        self.snapshot = CatalogueSnapshot.build(
            bundle.sids, spec.codebook_size, paths, self.explain(bundle.sids, paths, pause), bundle.item_table
        )
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------ graph calls
    def encode(self, histories: list[list[int]], sids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded histories -> memory (B, T_b, d) float32 and its mask (B, T_b) bool, T_b <= T.

        Most histories are far shorter than ``T``, and the encoder's cost grows with the padded
        length, so (when the bundle's encoder has a dynamic history axis) the batch is encoded in
        groups of ``ENCODER_GROUP`` histories of similar length, each padded only to its own longest,
        and the memories are left-padded to the batch's longest. That changes no real position: the
        encoder is causal and never attends to padding, and the decoder masks padded positions out.
        An empty history keeps all ``T`` positions (its memory is all padding, which the decoder reads).
        """
        t = self.history_length
        lengths = np.array([min(len(h), t) if h and self.trim_history else t for h in histories])
        width = int(lengths.max())
        memory = np.zeros((len(histories), width, self.d_model), dtype=np.float32)  # (B, T_b, d)
        mask = np.zeros((len(histories), width), dtype=bool)  # (B, T_b)
        order = np.argsort(lengths, kind="stable")
        for group in np.array_split(order, -(-len(histories) // ENCODER_GROUP)):
            span = int(lengths[group[-1]])  # the group's longest
            tokens = np.zeros((len(group), span), dtype=np.int64)  # (G, span), 0 = padding
            for row, index in enumerate(group):
                recent = histories[index][-t:]
                if recent:
                    tokens[row, span - len(recent) :] = np.asarray(recent, dtype=np.int64) + 1
            codes = sids[np.maximum(tokens - 1, 0)]  # (G, span, D); padding rows are masked out
            codes[tokens == 0] = 0
            (encoded,) = self.bundle.sessions["generator_encoder"].run(
                ["memory"], {"history_tokens": tokens, "history_codes": codes}
            )
            memory[group, width - span :] = encoded
            mask[group, width - span :] = tokens > 0
        return memory, mask

    def decoder(self, memory: np.ndarray, memory_mask: np.ndarray) -> Decoder:
        """A decoder for one batch: memory (B, T, d) and its mask (B, T) from ``encode``."""
        if not self.kv_cache:
            return ReferenceDecoder(self._reference_step, memory, memory_mask)
        (cross_kv,) = self.bundle.sessions["generator_cross_kv"].run(["cross_kv"], {"memory": memory})
        return IncrementalDecoder(self._incremental_step, cross_kv, memory_mask)  # (B, layers, 2, h, T, dh)

    def _reference_step(self, memory: np.ndarray, memory_mask: np.ndarray, prefix: np.ndarray) -> np.ndarray:
        feeds = {"memory": memory, "memory_mask": memory_mask, "prefix": prefix}
        (logits,) = self.bundle.sessions["generator_step"].run(["logits"], feeds)
        return logits  # (N, K)

    def _incremental_step(
        self, cross_kv: np.ndarray, memory_mask: np.ndarray, prefix: np.ndarray, past: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        feeds = {"cross_kv": cross_kv, "memory_mask": memory_mask, "prefix": prefix, "past": past}
        logits, newest = self.bundle.sessions["generator_step_incremental"].run(["logits", "newest"], feeds)
        return logits, newest  # (N, K), (N, layers, 2, d)

    def user_vectors(self, memory: np.ndarray) -> np.ndarray:
        """The dot-product head's user vector at each history's last position: (B, T, d) -> (B, item_dim)."""
        (users,) = self.bundle.sessions["generator_user"].run(["user"], {"memory": memory})
        return users

    def cold_item_vectors(self, sids: np.ndarray) -> np.ndarray:
        """The head's vectors of items the model never trained on, from their IDs (N, D): (N, item_dim)."""
        (vectors,) = self.bundle.sessions["item_vectors"].run(["vectors"], {"codes": sids})
        return vectors

    def tag_probabilities(self, codes: np.ndarray) -> list[np.ndarray]:
        """The tag heads on IDs (N, D): per level, probabilities (N, C_l) over the level's classes."""
        if codes.shape[0] == 0 or self.bundle.manifest.n_tag_levels == 0:
            return []
        return list(self.bundle.sessions["tag_heads"].run(None, {"codes": codes[:, : self.levels]}))

    def explain(
        self,
        codes: np.ndarray,
        category_paths: list[list[str]] | None = None,
        pause: Callable[[], None] | None = None,
    ) -> list[list[TagScore]]:
        """Generated tag path with per-level confidence for each ID (N, D), read from the tag heads
        (``service.explanations.read_tag_paths``: no placeholder classes, a real path of the taxonomy);
        with the items' ``category_paths``, each tag says whether it matches the catalogue's class.

        An explanation depends on the ID (and the row's catalogue path) alone, so it is computed once
        per catalogue row (when a snapshot is built, for the whole catalogue, ``EXPLAIN_ROWS`` at a
        time, ``pause`` called after each slice) and looked up when serving.
        """
        if codes.shape[0] > EXPLAIN_ROWS:
            explained: list[list[TagScore]] = []
            for start in range(0, codes.shape[0], EXPLAIN_ROWS):
                rows = slice(start, start + EXPLAIN_ROWS)
                explained += self.explain(
                    codes[rows], None if category_paths is None else category_paths[rows]
                )
                if pause is not None:
                    pause()
            return explained
        probs = self.tag_probabilities(codes)
        if not probs:
            return [[] for _ in range(codes.shape[0])]
        levels = self.bundle.tag_levels[: len(probs)]
        paths = read_tag_paths(probs, levels)
        if category_paths is None:
            return paths
        return with_agreement(paths, catalogue_classes(category_paths, levels))

    # ---------------------------------------------------------------------------- recommending
    def filter_rows(self, tag_path: list[str], snapshot: CatalogueSnapshot) -> np.ndarray:
        if len(tag_path) > self.max_filter_depth:
            raise InvalidRequest(
                f"filter.tag_path: depth {len(tag_path)} exceeds the catalogue's {self.max_filter_depth}"
            )
        rows = snapshot.by_path.get(tuple(tag_path))
        if rows is None:
            raise InvalidRequest(f"filter.tag_path: no item has the category path {tag_path}")
        return rows

    def recommend(
        self, queries: list[Query], on_step: Callable[[int, float, float], None] | None = None
    ) -> list[list[Recommendation]]:
        """Answer a batch of queries with one encoder call and one beam search (or one scoring of the
        catalogue by the dot-product head); explanations are looked up per item."""
        return run_to_end(self.recommend_steps(queries, on_step))

    def recommend_steps(
        self, queries: list[Query], on_step: Callable[[int, float, float], None] | None = None
    ) -> Steps[list[list[Recommendation]]]:
        """``recommend`` in steps: the encoder call, then each level of the beam search (or, for a
        bundle that ranks by the dot-product head, the scoring of every item)."""
        snapshot = self.snapshot
        batch = len(queries)
        allowed = excluded = None
        if any(q.tag_path for q in queries):
            allowed = np.ones((batch, snapshot.n_items), dtype=bool)  # (B, n_items)
            for row, query in enumerate(queries):
                if query.tag_path:
                    allowed[row] = False
                    allowed[row, self.filter_rows(query.tag_path, snapshot)] = True
        if any(q.exclude_seen and q.history for q in queries):
            excluded = np.zeros((batch, snapshot.n_items), dtype=bool)  # (B, n_items)
            for row, query in enumerate(queries):
                if query.exclude_seen:
                    excluded[row, query.history] = True
        memory, mask = self.encode([q.history for q in queries], snapshot.sids)
        yield
        if self.ranking == "dot":
            hits = self.rank_by_dot(memory, [q.k for q in queries], snapshot, allowed, excluded)
        else:
            processors: list[Processor] = []
            if allowed is not None:
                processors.append(AllowedItems(snapshot.index, allowed))
            if excluded is not None:
                processors.append(ExcludeItems(snapshot.index, excluded))
            hits = yield from ConstrainedBeamSearch(snapshot.index, self.clock).steps(
                self.decoder(memory, mask),
                np.array([q.beam for q in queries]),
                np.array([q.k for q in queries]),
                processors,
                on_step,
            )
        explanations = snapshot.explanations
        return [
            [
                Recommendation(h.item, h.score, h.codes, explanations[h.item] if q.explain else [])
                for h in request
            ]
            for q, request in zip(queries, hits, strict=True)
        ]

    def rank_by_dot(
        self,
        memory: np.ndarray,
        ks: list[int],
        snapshot: CatalogueSnapshot,
        allowed: np.ndarray | None,
        excluded: np.ndarray | None,
    ) -> list[list[BeamHit]]:
        """The dual-branch head scores every item; each request's best ``k`` allowed, unseen items.

        A hit's score is the item's log-probability under the head's softmax over the catalogue.
        Ties go to the lower row (as ``training.evaluate.ranking`` orders them).
        """
        assert snapshot.item_vectors is not None
        scores = log_softmax(self.user_vectors(memory) @ snapshot.item_vectors.T)  # (B, n_items)
        if allowed is not None:
            scores[~allowed] = -np.inf
        if excluded is not None:
            scores[excluded] = -np.inf
        hits = []
        for row, k in enumerate(ks):
            k = min(k, scores.shape[1])
            best = np.argpartition(-scores[row], k - 1)[:k]
            best = best[np.lexsort((best, -scores[row, best]))]  # score descending, then row
            hits.append(
                [
                    BeamHit(int(i), float(scores[row, i]), tuple(int(c) for c in snapshot.sids[i]))
                    for i in best
                    if np.isfinite(scores[row, i])
                ]
            )
        return hits

    # ------------------------------------------------------------------------------ cold start
    def tokenize(self, embedding: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """One embedding (E,) of float64 (as the request sent it: checked before the cast to the
        graph's float32, which would turn a value past its range into infinity) -> its L codes and
        its predicted tag id per level."""
        expected = self.bundle.manifest.embedding_dim
        if embedding.shape != (expected,):
            raise InvalidRequest(f"embedding: expected {expected} floats, got {embedding.shape[0]}")
        if not np.isfinite(embedding).all():
            raise InvalidRequest("embedding: contains NaN or infinity")
        if np.abs(embedding).max(initial=0.0) > _FLOAT32_MAX:  # the graph takes float32
            raise InvalidRequest(f"embedding: values must lie within ±{_FLOAT32_MAX:.4g} (float32)")
        codes, *tag_logits = self.bundle.sessions["tokenizer"].run(
            None, {"embedding": embedding[None].astype(np.float32)}
        )
        return codes[0].astype(np.int64), [int(t[0].argmax()) for t in tag_logits]

    def insert_item(
        self, item_id: str, sid: np.ndarray, title: str, category_path: list[str], tags: list[int]
    ) -> int:
        """Add an item with a known ID (new, or restored from the store) and swap in a new snapshot."""
        with self._lock:
            catalogue = self.bundle.catalogue
            if item_id in catalogue.position:
                raise InvalidRequest(f"item_id: {item_id!r} is already in the catalogue")
            snapshot = self.snapshot
            if (snapshot.sids == sid).all(axis=1).any():
                raise InvalidRequest(f"item_id {item_id!r}: the ID {sid.tolist()} is already taken")
            row = catalogue.append(item_id, title, category_path, tags)
            sids = np.vstack([snapshot.sids, sid[None].astype(np.int64)])  # (n_items + 1, D)
            explanations = [*snapshot.explanations, *self.explain(sids[-1:], [category_path])]
            vectors = snapshot.item_vectors
            if vectors is not None:
                vectors = np.vstack([vectors, self.cold_item_vectors(sids[-1:])])
            self.snapshot = CatalogueSnapshot.build(
                sids, self.codebook_size, catalogue.category_paths, explanations, vectors
            )
        return row
