"""Service settings: one pydantic-settings class read from ``SIDREC_*`` environment variables.

Built by the cached ``get_settings()`` factory (never at import time), so tests and ``python -m
service`` can set the environment first. Unsafe values fail fast at start-up with the variable's
name: a non-existent bundle path, a short API key, batching knobs outside sane bounds.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "decoding_layout", "get_settings"]


class Settings(BaseSettings):
    """Every knob of the service; the environment name is ``SIDREC_`` + the field name in capitals."""

    model_config = SettingsConfigDict(env_prefix="SIDREC_", extra="ignore", frozen=True)

    bundle_path: Path = Field(description="bundle directory written by `python -m training export`")
    redis_url: str = Field("", description="redis://host:port/db; empty = in-process store")
    redis_key_prefix: str = Field("sidrec", min_length=1, description="namespace of every Redis key")
    api_key: SecretStr | None = Field(
        None, description="required by PUT /items, /admin/* and (events_need_key) POST /events; never logged"
    )
    events_need_key: bool = Field(True, description="POST /events needs the API key too")
    bundle_root: Path | None = Field(
        None, description="directory whose sub-directories /admin/reload may name; unset = only bundle_path"
    )
    cors_origins: str = Field("", description="comma-separated origins allowed by CORS; empty = CORS off")
    providers: str = Field(
        "CUDAExecutionProvider,CPUExecutionProvider",
        description="onnxruntime providers in order of preference; unavailable ones are skipped",
    )
    kv_cache: bool = Field(
        True,
        description="decode with the bundle's incremental K/V-cached step graphs if present "
        "(else with the reference step graph)",
    )
    threads: int = Field(
        0, ge=0, le=256, description="onnxruntime intra-op threads per session; 0 = CPU limit / batch_workers"
    )
    batch_workers: int = Field(
        0,
        ge=0,
        le=64,
        description="micro-batches decoded at once, each in its own thread; 0 = one per 4 CPUs (at least 1)",
    )
    decode_in_loop: bool | None = Field(
        None,
        description="decode on the event loop, step by step, instead of in worker threads; unset = "
        "when the process may use a single CPU (see service/batcher.py)",
    )
    max_batch_size: int = Field(32, ge=1, le=1024, description="requests per micro-batch at most")
    max_wait_ms: float | None = Field(
        None,
        ge=0,
        le=1000,
        description="how long a batch waits to fill up; unset = 2 ms with decoding threads, none when "
        "the event loop decodes (see service/batcher.py)",
    )
    queue_size: int = Field(256, ge=1, le=100_000, description="queued requests before 429")
    max_queue_delay_ms: float = Field(
        0.0,
        ge=0,
        le=60_000,
        description="429 when a request's expected wait behind the requests already in the service "
        "(in service × the time each request ahead has recently added) is longer, while the decoder "
        "is saturated; 0 = only the queue size and the deadline (see service/admission.py)",
    )
    request_timeout_ms: float = Field(
        2000.0,
        ge=1,
        le=600_000,
        description="deadline of every request; expired work never reaches the model",
    )
    spool_dir: Path | None = Field(
        None,
        description="folder where events accepted while Redis is down are fsynced before the 2xx and "
        "kept until Redis has them (service/spool.py); unset = such events are refused with 503",
    )
    event_buffer_size: int = Field(
        10_000, ge=1, le=10_000_000, description="events spooled while Redis is down; beyond, 503"
    )
    history_mirror_users: int = Field(
        10_000, ge=0, le=10_000_000, description="histories kept in memory to serve users while Redis is down"
    )
    history_cap: int = Field(200, ge=1, le=10_000, description="events kept per user")
    cache_ttl_s: float = Field(0.0, ge=0, le=3600, description="result cache TTL; 0 = no cache")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 413")
    read_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="a request's headers and body must arrive within this from its first byte (or from "
        "the connection opening); slower or idle half-open connections are closed (service/server.py)",
    )
    shutdown_grace_s: float = Field(
        10.0,
        ge=0,
        le=300,
        description="after SIGTERM, how long requests in flight may take to finish before they are "
        "cancelled and the process exits (keep it under the orchestrator's own grace period)",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("api_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("SIDREC_API_KEY must be at least 16 characters")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    def decoding_layout(self, cpus: int) -> tuple[int, int]:
        """(batch workers, onnxruntime threads per session) for a process allowed ``cpus`` CPUs."""
        return decoding_layout(cpus, self.batch_workers, self.threads)

    def decodes_in_loop(self, cpus: int) -> bool:
        """Whether a process allowed ``cpus`` CPUs decodes on its event loop (``decode_in_loop``)."""
        return cpus == 1 if self.decode_in_loop is None else self.decode_in_loop

    def batch_wait_ms(self, in_loop: bool) -> float:
        """How long a batch waits to fill up: ``max_wait_ms``, or its default for the decoding mode."""
        if self.max_wait_ms is not None:
            return self.max_wait_ms
        return 0.0 if in_loop else 2.0

    @property
    def provider_list(self) -> list[str]:
        return [p.strip() for p in self.providers.split(",") if p.strip()]


def decoding_layout(cpus: int, workers: int = 0, threads: int = 0) -> tuple[int, int]:
    """(batch workers, onnxruntime threads per session); 0 picks the default.

    Default: one batch worker per 4 CPUs (at least 1), the CPUs shared out as intra-op threads. In
    process, two single-threaded workers on 2 cores decode 1.7x the requests of one two-threaded
    worker (benchmarks/serving.py --workers 2), but behind HTTP on the same 2 cores they halved the
    closed-loop throughput (185 vs 378 req/s, benchmarks/reliability.py): the event loop, parsing and
    answering requests, needs a core of its own, and two workers holding the GIL between graph calls
    starve it. More workers pay off only where cores are left over for the event loop.
    """
    workers = workers or max(1, cpus // 4)
    return workers, threads or max(1, cpus // workers)


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()  # type: ignore[call-arg]  # bundle_path comes from the environment
