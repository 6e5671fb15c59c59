"""Serving benchmark: the service's decoding path vs the way public re-implementations decode.

  python -m benchmarks.serving --bundle runs/beauty/bundle --data runs/beauty/data \\
      --out benchmarks/results/serving-cpu.json

(a) service: requests go through the real ``MicroBatcher`` (cap = the batch size, 2 ms wait, the
    service's batch workers and onnxruntime threads: ``DecodingLayout.for_cpus``) into
    ``Recommender``: one encoder call per batch (history encoded once per request), one step call per
    level over batch × beam, the STATIC-style prefix index for the masks, explanations included.
    Closed loop: ``batch size × workers`` concurrent clients, each sending its next request when
    answered, so every worker can fill its batches.
(b) peer-style: one request at a time, the same ONNX graphs (the incremental ones when the bundle has
    them: encoder K/V computed once and decoder ``past_key_values`` reordered by beam, as HF
    ``generate`` decodes), and a per-beam Python dict trie consulted
    through a ``prefix_allowed_tokens(beam, prefix)`` callback that fills the mask beam by beam (the
    transformers ``PrefixConstrainedLogitsProcessor`` pattern used by TIGER/LC-Rec re-implementations).
    It runs once with 1 onnxruntime thread and once with the CPU limit; the faster run is the
    reference (one request at a time gains little from more threads).

The service runs with the incremental graphs and, for comparison, with the reference step graph that
re-projects the memory and recomputes the whole prefix for every beam (``--kv-cache both``). Both
decoders decode the same histories with the same k, beam and exclude_seen; the top-k of every
request is compared.
The mask column is constraint masking's share of decoding, both read on the decoding thread's CPU
clock (``time.thread_time``), so a worker waiting for another's GIL does not count as masking.
Prints a table and the throughput ratio and writes JSON with the command in it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import sys
import threading
import time
from pathlib import Path

import numpy as np

from service.batcher import MicroBatcher
from service.beam_search import log_softmax
from service.bundle import load_bundle
from service.layout import DecodingLayout, cpu_limit
from service.memory import freeze_heap, tune_allocator
from service.metrics import ServiceMetrics
from service.recommender import Query, Recommender


def read_histories(data: Path | None, n_items: int, count: int, seed: int) -> tuple[list[list[int]], str]:
    """Real test histories (all but the last item) from a prepared dataset, or random ones (said so)."""
    rng = np.random.default_rng(seed)
    if data is not None:
        rows = [json.loads(line)["items"] for line in (data / "sequences.jsonl").read_text().splitlines()]
        chosen = rng.choice(len(rows), size=min(count, len(rows)), replace=False)
        return [list(rows[i][:-1]) for i in chosen], f"test histories of {data / 'sequences.jsonl'}"
    lengths = rng.integers(3, 20, size=count)
    return [rng.integers(0, n_items, size=n).tolist() for n in lengths], "random histories (no --data given)"


class PeerDecoder:
    """One request at a time, per-beam Python dict trie through a prefix-allowed-tokens callback."""

    def __init__(self, recommender: Recommender) -> None:
        self.recommender = recommender
        sids = recommender.snapshot.sids
        self.trie: dict[tuple[int, ...], list[int]] = {}
        self.leaf: dict[tuple[int, ...], int] = {}
        for item, ident in enumerate(sids.tolist()):
            for s in range(len(ident)):
                children = self.trie.setdefault(tuple(ident[:s]), [])
                if ident[s] not in children:
                    children.append(ident[s])
            self.leaf[tuple(ident)] = item

    def prefix_allowed_tokens(self, prefix: tuple[int, ...], seen: set[int]) -> list[int]:
        allowed = self.trie.get(prefix, [])
        if len(prefix) == self.recommender.snapshot.sids.shape[1] - 1:
            allowed = [c for c in allowed if self.leaf[(*prefix, c)] not in seen]
        return allowed

    def recommend(self, history: list[int], k: int, beam: int) -> list[int]:
        memory, mask = self.recommender.encode([history], self.recommender.snapshot.sids)  # (1, T, d)
        decoder = self.recommender.decoder(memory, mask)  # the service's graphs, fed one request
        depth = self.recommender.snapshot.sids.shape[1]
        seen = set(history)
        beams: list[tuple[tuple[int, ...], float, int]] = [((), 0.0, 0)]  # prefix, score, parent beam
        for _ in range(depth):
            n = len(beams)
            prefix = np.array([p for p, _, _ in beams], dtype=np.int64).reshape(1, n, -1)  # (1, n, S)
            parent = np.array([[b for _, _, b in beams]], dtype=np.int64)  # (1, n): reorder the caches
            logp = log_softmax(decoder.step(prefix, parent)[0])  # (n, K)
            k_codes = logp.shape[1]
            masked = np.full_like(logp, -np.inf)
            for b, (p, _, _) in enumerate(beams):  # the per-beam callback loop
                allowed = self.prefix_allowed_tokens(p, seen)
                masked[b, allowed] = logp[b, allowed]
            scores = (np.array([s for _, s, _ in beams], dtype=np.float32)[:, None] + masked).reshape(-1)
            order = np.argsort(-scores, kind="stable")[:beam]
            beams = [
                ((*beams[i // k_codes][0], int(i % k_codes)), float(scores[i]), int(i // k_codes))
                for i in order
                if np.isfinite(scores[i])
            ]
        return [self.leaf[p] for p, _, _ in beams[:k]]


def peer_run(recommender: Recommender, histories: list[list[int]], k: int, beam: int) -> tuple[dict, dict]:
    """Decode ``histories`` one at a time with ``PeerDecoder``: (row for the report, top-k per history)."""
    peer = PeerDecoder(recommender)
    for history in histories[:8]:  # warm-up: graph initialisation, allocator
        peer.recommend(history, k, beam)
    freeze_heap()  # the same heap treatment as the service's path
    latencies, results = [], {}
    started = time.perf_counter()
    for i, history in enumerate(histories):
        t0 = time.perf_counter()
        results[i] = peer.recommend(history, k, beam)
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - started
    lat = np.array(latencies) * 1000
    row = {
        "requests": len(histories),
        "rps": len(histories) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }
    return row, results


async def closed_loop(
    recommender: Recommender, queries: list[Query], batch_size: int, workers: int, wait_ms: float
) -> dict:
    metrics = ServiceMetrics()
    mask_seconds = [0.0]
    lock = threading.Lock()  # workers report from their own threads

    def observe(depth: int, step: float, mask: float) -> None:
        metrics.observe_step(depth, step, mask)
        with lock:
            mask_seconds[0] += mask

    clients = batch_size * workers
    batcher = MicroBatcher(
        max_batch_size=batch_size,
        max_wait_ms=wait_ms,
        queue_size=4 * clients + 16,
        metrics=metrics,
        workers=workers,
    )
    original = recommender.recommend
    decode_seconds = [0.0]

    def timed(batch: list[Query], on_step: object = None) -> list:
        started = time.thread_time()  # the same clock as the recommender's on_step (see main)
        out = original(batch, observe)
        with lock:
            decode_seconds[0] += time.thread_time() - started
        return out

    recommender.recommend = timed  # type: ignore[method-assign,assignment]  # the benchmark's own timing seam
    batcher.start()
    latencies: list[float] = []
    results: dict[int, list[int]] = {}
    cursor = iter(range(len(queries)))

    async def client() -> None:
        for i in cursor:
            started = time.perf_counter()
            hits = await batcher.submit(recommender, queries[i])
            latencies.append(time.perf_counter() - started)
            results[i] = [h.item for h in hits]

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - started
    await batcher.stop()
    recommender.recommend = original  # type: ignore[method-assign]
    lat = np.array(latencies) * 1000
    return {
        "requests": len(queries),
        "rps": len(queries) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "mask_share_of_decode": mask_seconds[0] / decode_seconds[0],
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bundle", type=Path, required=True, help="bundle directory")
    parser.add_argument("--data", type=Path, default=None, help="prepared dataset for real histories")
    parser.add_argument(
        "--requests", type=int, default=512, help="requests per service run (default: %(default)s)"
    )
    parser.add_argument("--peer-requests", type=int, default=128, help="requests for the peer decoder")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument(
        "--provider",
        default="CPUExecutionProvider",
        help="comma list of onnxruntime providers (default: CPU)",
    )
    parser.add_argument(
        "--kv-cache",
        choices=["both", "on", "off"],
        default="both",
        help="service with the incremental (K/V-cached) graphs, the reference step, or both",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="the service's onnxruntime threads per session (0 = as the service: CPU limit / workers)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="the service's batch workers (0 = as the service: one per 4 CPUs)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serving-cpu.json"))
    parser.add_argument("--note", default="", help="free text stored in the JSON (e.g. what the bundle is)")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.serving " + shlex.join(sys.argv[1:] if argv is None else argv)

    cpus = cpu_limit()
    workers = args.workers or DecodingLayout.for_cpus(cpus).workers  # 0: as the service
    threads = args.threads or max(1, cpus // workers)
    bundle = load_bundle(args.bundle, args.provider.split(","), threads)
    if bundle.manifest.decoding.ranking != "beam":
        parser.error(
            f"{args.bundle} ranks by {bundle.manifest.decoding.ranking!r}; this benchmark times the "
            "constrained beam search against a peer-style beam: export a run trained with "
            "--set eval.ranking=beam"
        )
    recommender = Recommender(bundle)  # the incremental graphs when the bundle has them
    modes = {"both": [True, False], "on": [True], "off": [False]}[args.kv_cache]
    if not bundle.manifest.has_kv_cache:
        modes = [False]
    histories, source = read_histories(
        args.data, bundle.manifest.n_items, max(args.requests, args.peer_requests), 0
    )
    queries = [
        Query(h, args.k, args.beam, exclude_seen=True, explain=True) for h in histories[: args.requests]
    ]
    for q in queries[:8]:  # warm-up: graph initialisation, allocator
        recommender.recommend([q])
    tune_allocator()  # as the service does once a bundle is loaded (the peer below runs with it too)
    freeze_heap()

    peer_runs = []
    for peer_threads in sorted({1, cpu_limit()}):
        peer_bundle = load_bundle(args.bundle, args.provider.split(","), peer_threads)
        row, results = peer_run(Recommender(peer_bundle), histories[: args.peer_requests], args.k, args.beam)
        peer_runs.append(({**row, "threads": peer_threads}, results))
    peer_row, peer_results = max(peer_runs, key=lambda run: run[0]["rps"])

    rows = []
    for kv_cache in modes:
        # masking's share of decoding in the decoding thread's CPU time: two workers wait for each
        # other's GIL, which wall time would count as masking (with one worker of 2 onnxruntime threads
        # the second thread's share of the graph time is left out, which overstates the share)
        served = Recommender(bundle, kv_cache=kv_cache, clock=time.thread_time)
        for size in [int(b) for b in args.batch_sizes.split(",")]:
            row = asyncio.run(closed_loop(served, queries, size, workers, wait_ms=2.0))
            results = row.pop("results")
            compared = [i for i in peer_results if i in results]
            row["identical_topk"] = sum(results[i] == peer_results[i] for i in compared)
            row["compared"] = len(compared)
            row["batch_size"] = size
            row["workers"] = workers
            row["kv_cache"] = kv_cache
            rows.append(row)

    best = max(rows, key=lambda r: r["rps"])
    rated = [r for r in rows if r["p99_ms"] <= 100]
    report = {
        "command": command,
        "bundle_id": bundle.bundle_id,
        "bundle": str(args.bundle),
        "note": args.note,
        "histories": source,
        "provider": bundle.provider,
        "threads": threads,
        "workers": workers,
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_limit": cpu_limit(),
            "platform": platform.platform(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "n_items": bundle.manifest.n_items,
        "id_spec": bundle.manifest.id_spec.model_dump(),
        "k": args.k,
        "beam": args.beam,
        "peer_style": peer_row,
        "peer_style_runs": [row for row, _ in peer_runs],
        "service": rows,
        "ratio_best_service_vs_peer_rps": best["rps"] / peer_row["rps"],
        "best_rps_at_p99_le_100ms": max((r["rps"] for r in rated), default=0.0),
        "bars": {
            "ratio>=5": best["rps"] / peer_row["rps"] >= 5,
            "mask_share<=5%": max(r["mask_share_of_decode"] for r in rows) <= 0.05,
            ">=150 rps at p99<=100ms": max((r["rps"] for r in rated), default=0.0) >= 150,
        },
    }
    print(
        f"bundle {bundle.bundle_id} ({bundle.manifest.n_items} items), {bundle.provider}, "
        f"k={args.k} beam={args.beam}; service: {workers} batch worker(s) x {threads} onnxruntime thread(s)"
    )
    print(
        f"{'decoder':<22}{'batch':>6}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'mask %':>8}{'same top-k':>12}"
    )
    peer_label = f"peer-style (1 by 1, {peer_row['threads']}t)"
    print(
        f"{peer_label:<26}{1:>6}{peer_row['rps']:>10.1f}{peer_row['p50_ms']:>10.1f}"
        f"{peer_row['p99_ms']:>10.1f}{'':>8}{'(reference)':>12}"
    )
    for r in rows:
        print(
            f"{'service ' + ('kv-cache' if r['kv_cache'] else 'ref-step'):<26}{r['batch_size']:>6}"
            f"{r['rps']:>10.1f}{r['p50_ms']:>10.1f}{r['p99_ms']:>10.1f}"
            f"{100 * r['mask_share_of_decode']:>8.1f}{r['identical_topk']:>6}/{r['compared']:<5}"
        )
    print(f"\nthroughput ratio (best service / peer-style): {report['ratio_best_service_vs_peer_rps']:.1f}x")
    print(f"best req/s with p99 <= 100 ms: {report['best_rps_at_p99_le_100ms']:.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
