"""The vectorised beam search against a plain per-beam Python reference of CONTRACTS §3.

The reference below is deliberately the obvious implementation (one request, one beam, a dict trie,
``sorted`` with an explicit tie-break key); the numpy search must give identical items, order and
scores (to float32 rounding) on random tries, beam widths, ``k`` and allowed-item sets.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.beam_search import BeamHit, ConstrainedBeamSearch, log_softmax, run_to_end, top_candidates
from service.constraints import AllowedItems, ExcludeItems, StepContext, TrieConstraint
from service.decoders import IncrementalDecoder, ReferenceDecoder
from service.errors import InvalidRequest
from service.prefix_index import PrefixIndex


def _search(index: PrefixIndex, *args: object) -> list[list[BeamHit]]:
    """``ConstrainedBeamSearch.steps`` run to the end."""
    return run_to_end(ConstrainedBeamSearch(index).steps(*args))


def toy_table(k: int, depth: int, seed: int) -> np.ndarray:
    """(D, K, K): what code ``c`` at level ``j`` adds to the next level's logits."""
    return np.random.default_rng(seed).normal(size=(depth, k, k)).astype(np.float32) * 2


def make_step(k: int, depth: int, seed: int):
    """A deterministic toy generator step: logits depend on the memory and on every prefix code."""
    table = toy_table(k, depth, seed)

    def step(memory: np.ndarray, mask: np.ndarray, prefix: np.ndarray) -> np.ndarray:
        logits = (memory * mask[:, :, None]).sum(axis=1)[:, :k].copy()  # (N, K)
        for j in range(prefix.shape[1]):
            logits += table[j, prefix[:, j]]
        return logits

    return step


def reference_search(sids, step, memory, mask, beam, k, allowed, excluded):
    """One request at a time, a Python list of beams, prefixes checked against a set of allowed IDs;
    excluded IDs are removed from the allowed leaves only (their prefixes stay valid)."""
    allowed_ids = {tuple(int(c) for c in sids[i]): i for i in range(len(sids)) if allowed[i]}
    prefixes = {ident[:s] for ident in allowed_ids for s in range(len(ident))}
    prefixes |= {ident for ident, i in allowed_ids.items() if not excluded[i]}
    beams = [((), 0.0)]
    for _ in range(sids.shape[1]):
        cands = []
        for b, (pre, score) in enumerate(beams):
            prefix = np.array([pre], dtype=np.int64).reshape(1, len(pre))
            logp = log_softmax(step(memory[None], mask[None], prefix))[0]
            for code, lp in enumerate(logp):
                value = score + float(lp) if (*pre, code) in prefixes else -math.inf
                cands.append((-value, b * len(logp) + code, (*pre, code), value))
        cands.sort(key=lambda c: (c[0], c[1]))
        beams = [(c[2], c[3]) for c in cands[:beam] if c[3] > -math.inf]
    return [(allowed_ids[pre], score) for pre, score in beams[:k]]


def random_sids(rng, n, k, depth):
    sids = np.unique(rng.integers(0, k, size=(n, depth)), axis=0)
    rng.shuffle(sids)
    return sids


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), dense_levels=st.integers(0, 4), constrained=st.booleans())
def test_matches_reference(seed: int, dense_levels: int, constrained: bool) -> None:
    rng = np.random.default_rng(seed)
    k, depth, batch = 5, 4, 6
    sids = random_sids(rng, 60, k, depth)
    index = PrefixIndex.build(sids, k, dense_levels=dense_levels)
    step = make_step(k, depth, seed)
    memory = rng.normal(size=(batch, 3, 8)).astype(np.float32)
    mask = rng.random((batch, 3)) > 0.3
    beams = rng.integers(1, 12, size=batch)
    ks = np.minimum(rng.integers(1, 12, size=batch), beams)
    allowed = rng.random((batch, len(sids))) > 0.6 if constrained else np.ones((batch, len(sids)), bool)
    allowed[:, 0] = True
    excluded = rng.random((batch, len(sids))) > 0.7 if constrained else np.zeros((batch, len(sids)), bool)
    processors = [AllowedItems(index, allowed), ExcludeItems(index, excluded)] if constrained else []
    hits = _search(index, ReferenceDecoder(step, memory, mask), beams, ks, processors)
    for b in range(batch):
        expected = reference_search(
            sids, step, memory[b], mask[b], int(beams[b]), int(ks[b]), allowed[b], excluded[b]
        )
        assert [h.item for h in hits[b]] == [item for item, _ in expected]
        np.testing.assert_allclose([h.score for h in hits[b]], [s for _, s in expected], rtol=1e-5)
        for hit in hits[b]:
            assert hit.codes == tuple(sids[hit.item])


def make_incremental_step(k: int, depth: int, seed: int):
    """``make_step`` as an incremental step: the prefix is read back from the cache (``past`` holds the
    tokens of positions ``0..S-1`` as floats, BOS = -1; ``newest`` returns position ``S``'s), only
    the newest code from ``prefix``, so a
    decoder that gave a beam another beam's cache would get other logits. ``cross_kv`` carries the
    memory's contribution (B, K) as its ``T`` axis."""
    table = toy_table(k, depth, seed)

    def step(cross_kv, mask, prefix, past):
        rows, s = prefix.shape
        newest = prefix[:, -1:] if s else np.full((rows, 1), -1)  # (N, 1) token at position S
        tokens = np.concatenate([past[:, :, 0, 0, 0], newest.astype(np.float32)], axis=1)  # (N, S+1)
        logits = np.repeat(cross_kv[:, 0, 0, 0, :, 0], rows // len(cross_kv), axis=0)  # (N, K)
        for j, codes in enumerate(tokens[:, 1:].astype(np.int64).T):
            logits = logits + table[j, codes]
        return logits, np.broadcast_to(newest.astype(np.float32).reshape(rows, 1, 1, 1), (rows, 1, 2, 1))

    return step


def test_incremental_decoder_reorders_its_cache() -> None:
    rng = np.random.default_rng(4)
    k, depth, batch = 6, 4, 5
    sids = random_sids(rng, 120, k, depth)
    index = PrefixIndex.build(sids, k)
    memory = rng.normal(size=(batch, 3, 8)).astype(np.float32)
    mask = rng.random((batch, 3)) > 0.3
    base = (memory * mask[:, :, None]).sum(axis=1)[:, :k]  # (B, K) what make_step adds for the memory
    beams, ks = rng.integers(2, 10, size=batch), np.full(batch, 2)
    reference = ReferenceDecoder(make_step(k, depth, 4), memory, mask)
    expected = _search(index, reference, beams, ks)
    cross_kv = base.reshape(batch, 1, 1, 1, k, 1).repeat(2, axis=2)  # (B, layers, 2, h, T, dh)
    decoder = IncrementalDecoder(make_incremental_step(k, depth, 4), cross_kv, mask)
    assert _search(index, decoder, beams, ks) == expected


def test_full_beam_returns_every_item_once() -> None:
    rng = np.random.default_rng(1)
    sids = random_sids(rng, 200, 8, 3)
    index = PrefixIndex.build(sids, 8)
    memory = rng.normal(size=(1, 2, 8)).astype(np.float32)
    decoder = ReferenceDecoder(make_step(8, 3, 1), memory, np.ones((1, 2), bool))
    hits = _search(index, decoder, np.array([len(sids)]), np.array([len(sids)]))[0]
    assert sorted(h.item for h in hits) == list(range(len(sids)))
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))


def test_processors_do_not_mutate_input() -> None:
    rng = np.random.default_rng(2)
    sids = random_sids(rng, 40, 6, 3)
    index = PrefixIndex.build(sids, 6)
    scores = rng.normal(size=(2, 6)).astype(np.float32)
    before = scores.copy()
    first = StepContext(1, 1, index, np.zeros(2, dtype=np.int64))
    allowed = rng.random((2, len(sids))) > 0.5
    last = StepContext(3, 1, index, np.zeros(2, dtype=np.int64))
    for processor, context in (
        (TrieConstraint(), first),
        (AllowedItems(index, allowed), first),
        (ExcludeItems(index, np.ones_like(allowed)), last),
    ):
        out = processor(scores, context)
        assert out is not scores or not np.isneginf(out).any(), "its input back only if it bans nothing"
        np.testing.assert_array_equal(scores, before)


def test_exclusion_reads_the_listed_children_as_the_table() -> None:
    """``ExcludeItems`` bans the same codes whether it finds a row's leaves in the index's per-row
    lists (a CSR depth; short rows repeat an entry) or in the (N, K) child table (a dense one)."""
    rng = np.random.default_rng(5)
    sids = random_sids(rng, 300, 8, 3)
    listed, dense = PrefixIndex.build(sids, 8), PrefixIndex.build(sids, 8, dense_levels=3)
    states = rng.integers(0, len(listed.leaf_start[2]) - 1, size=12)  # depth-2 nodes, 4 requests x 3
    assert listed.listed(2, states) is not None and dense.listed(2, states) is None
    excluded = rng.random((4, len(sids))) > 0.6
    scores = rng.normal(size=(12, 8)).astype(np.float32)
    from_lists = ExcludeItems(listed, excluded)(scores, StepContext(3, 3, listed, states))
    from_table = ExcludeItems(dense, excluded)(scores, StepContext(3, 3, dense, states))
    np.testing.assert_array_equal(from_lists, from_table)
    assert np.isneginf(from_lists).any() and np.isfinite(from_lists).any()


def test_unsatisfiable_constraint_raises() -> None:
    index = PrefixIndex.build(np.array([[0, 1], [1, 0]]), 2)
    with pytest.raises(InvalidRequest, match="request 1"):
        AllowedItems(index, np.array([[True, False], [False, False]]))


def test_prefix_index_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(3)
    sids = random_sids(rng, 300, 16, 4)
    index = PrefixIndex.build(sids, 16)
    index.save(tmp_path / "p.npz")
    again = PrefixIndex.load(tmp_path / "p.npz")
    states = np.arange(len(index.leaf_start[2]) - 1)
    np.testing.assert_array_equal(index.children(2, states), again.children(2, states))
    np.testing.assert_array_equal(sids[again.leaf_item], sids[np.lexsort(sids.T[::-1])])


@settings(max_examples=50, deadline=None)
@given(n_items=st.integers(1, 200), k=st.integers(2, 12), depth=st.integers(2, 4), seed=st.integers(0, 2**16))
def test_children_match_a_dict_trie(n_items: int, k: int, depth: int, seed: int) -> None:
    """Dense and padded-CSR depths alike: every node's child table is exactly its dict-trie children."""
    sids = np.unique(np.random.default_rng(seed).integers(0, k, size=(n_items, depth)), axis=0)
    index = PrefixIndex.build(sids, k)
    rows = sids[np.lexsort(sids.T[::-1])].tolist()
    for s in range(depth):
        prefixes = sorted({tuple(r[:s]) for r in rows})  # node ids are lexicographic ranks
        expected = np.full((len(prefixes), k), -1, dtype=np.int32)
        nodes = sorted({tuple(r[: s + 1]) for r in rows})
        for child_id, node in enumerate(nodes):
            expected[prefixes.index(node[:s]), node[s]] = child_id
        states = np.random.default_rng(seed).permutation(len(prefixes))  # any order, repeats allowed
        np.testing.assert_array_equal(index.children(s, states), expected[states])


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 4),
    width=st.integers(1, 40),
    keep=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_top_candidates_is_the_stable_sort_prefix(rows: int, width: int, keep: int, seed: int) -> None:
    """Few distinct values and many -inf: ties straddle the cut, which is where a partition could differ."""
    rng = np.random.default_rng(seed)
    candidates = rng.choice(np.array([-np.inf, -3.0, -1.5, -1.5, 0.0], np.float32), size=(rows, width))
    expected = np.argsort(-candidates, axis=1, kind="stable")[:, :keep]
    np.testing.assert_array_equal(top_candidates(candidates, keep), expected)
