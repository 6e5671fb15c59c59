"""Prometheus metrics of one app instance (own registry, so several apps can live in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ServiceMetrics"]

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class ServiceMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.request_latency = Histogram(
            "sidrec_request_latency_seconds",
            "HTTP request latency",
            ["route", "status"],
            buckets=_FAST,
            registry=r,
        )
        self.batch_size = Histogram(
            "sidrec_batch_size", "requests per micro-batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r
        )
        self.queue_wait = Histogram(
            "sidrec_queue_wait_seconds", "time a request waited for its batch", buckets=_FAST, registry=r
        )
        self.beam_step = Histogram(
            "sidrec_beam_step_seconds",
            "step-graph time per decoding level",
            ["depth"],
            buckets=_FAST,
            registry=r,
        )
        self.mask_time = Histogram(
            "sidrec_constraint_mask_seconds", "constraint masking time per level", buckets=_FAST, registry=r
        )
        self.rejected = Counter(
            "sidrec_rejected_total",
            "requests refused because the queue was full",
            registry=r,
        )
        self.redis_up = Gauge("sidrec_redis_up", "1 when Redis answers, 0 when degraded", registry=r)
        self.store_errors = Counter("sidrec_store_errors_total", "failed Redis operations", registry=r)
        self.redis_reconnects = Counter(
            "sidrec_redis_reconnect_attempts_total", "reconnect attempts (exponential backoff)", registry=r
        )
        self.event_buffer = Gauge(
            "sidrec_event_buffer_events", "accepted events waiting for Redis to come back", registry=r
        )
        self.events_flushed = Counter(
            "sidrec_events_flushed_total", "buffered events written once Redis was back", registry=r
        )
        self.events_refused = Counter(
            "sidrec_events_refused_total", "events refused with 503 because the buffer was full", registry=r
        )
        self.expired = Counter(
            "sidrec_expired_total",
            "requests dropped before the model because their deadline passed",
            registry=r,
        )
        self.bundle_in_sync = Gauge(
            "sidrec_bundle_in_sync",
            "1 while this replica serves the bundle the fleet's last reload named (or none was named), "
            "0 while it could not load it and serves an older one",
            registry=r,
        )
        self.bundle_in_sync.set(1)
        self.cache_hits = Counter(
            "sidrec_cache_hits_total", "recommendations answered from the cache", registry=r
        )

    def observe_step(self, depth: int, step_seconds: float, mask_seconds: float) -> None:
        self.beam_step.labels(str(depth)).observe(step_seconds)
        self.mask_time.observe(mask_seconds)
