"""Service settings: one pydantic-settings class read from ``SIDREC_*`` environment variables.

Built by the cached ``get_settings()`` factory (never at import time), so tests and ``python -m
service`` can set the environment first. Unsafe values fail fast at start-up with the variable's
name: a non-existent bundle path, a short API key, a value outside its documented range.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Every knob of the service; the environment name is ``SIDREC_`` + the field name in capitals."""

    model_config = SettingsConfigDict(env_prefix="SIDREC_", extra="ignore", frozen=True)

    bundle_path: Path = Field(description="bundle directory written by `python -m training export`")
    redis_url: str = Field(
        "",
        description="redis://host:port/db, or redis+cluster://host:port (any one node) for a Redis Cluster; "
        "empty = in-process store",
    )
    redis_key_prefix: str = Field("sidrec", min_length=1, description="namespace of every Redis key")
    api_key: SecretStr | None = Field(
        None,
        description="required by PUT /items, /admin/* and (events_need_key) POST /events; at least 16 "
        "characters; never logged",
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
    max_batch_size: int = Field(
        32,
        ge=1,
        le=1024,
        description="requests per micro-batch at most (the rest of the decoding layout follows from the "
        "CPU limit: service/layout.py)",
    )
    queue_size: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="recommendations in the service at once (being read, waiting or decoding); the next "
        "gets 429 + Retry-After before its body is read. Unset = 2 x max_batch_size (service/batcher.py "
        "says why)",
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

    @property
    def queue_limit(self) -> int:
        """Recommendations in the service at once: ``queue_size``, by default two batches."""
        return self.queue_size or 2 * self.max_batch_size

    @property
    def provider_list(self) -> list[str]:
        return [p.strip() for p in self.providers.split(",") if p.strip()]


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()  # type: ignore[call-arg]  # bundle_path comes from the environment
