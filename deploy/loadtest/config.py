"""What a load test runs, validated before a single request is sent.

The limits (``max_requests``, ``max_duration_s``) and the loopback-only rule are checked here, up
front, so that a typo in a rate list cannot turn into an unbounded flood or into traffic aimed at a
machine the user did not name.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from deploy.loadtest.errors import ConfigError

__all__ = ["REQUEST_KINDS", "LoadTestConfig"]

#: The request kinds of the mix: recommendations for a stored user, for an explicit history, with a
#: tag-path filter, and interaction events appended to a user's history.
REQUEST_KINDS = ("user", "history", "filtered", "event")


@dataclass(frozen=True)
class LoadTestConfig:
    """One load test: rate steps, their length, the request mix and the latency target."""

    url: str = "http://127.0.0.1:8000"  # or several base URLs joined by commas (``targets``)
    rates: tuple[float, ...] = (5.0, 10.0, 20.0, 40.0)  # offered requests/s, one step each
    step_seconds: float = 10.0
    max_concurrency: int = 64  # requests in flight at once; later arrivals wait (and the wait counts)
    mix: dict[str, float] = field(
        default_factory=lambda: {"user": 0.4, "history": 0.3, "filtered": 0.2, "event": 0.1}
    )
    arrivals: str = "poisson"  # "poisson" (exponential gaps) or "uniform" (fixed gaps)
    p99_target_ms: float = 100.0
    k: int = 10
    beam: int | None = None  # None: the bundle's default
    timeout_s: float = 2.0  # per request, counted from its scheduled time
    n_users: int = 200  # users whose histories are seeded through POST /events before the steps
    max_history: int = 20  # seeded/explicit histories keep their most recent items only
    data: Path | None = None  # a prepared dataset: histories come from its test users
    api_key: str | None = None  # for POST /events (a write endpoint)
    allow_remote: tuple[str, ...] = ()  # hosts besides loopback that may be targeted
    max_requests: int = 200_000
    max_duration_s: float = 1800.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.rates or any(rate <= 0 for rate in self.rates):
            raise ConfigError(f"rates: need at least one positive rate, got {list(self.rates)}")
        if self.step_seconds <= 0:
            raise ConfigError(f"step_seconds: must be > 0, got {self.step_seconds}")
        if self.max_concurrency < 1:
            raise ConfigError(f"max_concurrency: must be >= 1, got {self.max_concurrency}")
        unknown = sorted(set(self.mix) - set(REQUEST_KINDS))
        if unknown or any(weight < 0 for weight in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ConfigError(
                f"mix: weights must be >= 0 over {list(REQUEST_KINDS)} with a positive sum, got {self.mix}"
                + (f" (unknown kinds {unknown})" if unknown else "")
            )
        if self.arrivals not in ("poisson", "uniform"):
            raise ConfigError(f"arrivals: 'poisson' or 'uniform', got {self.arrivals!r}")
        for name in ("p99_target_ms", "timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be > 0, got {getattr(self, name)}")
        for name in ("k", "n_users", "max_history"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.beam is not None and self.beam < self.k:
            raise ConfigError(f"beam: must be >= k ({self.k}), got {self.beam}")
        if self.mix.get("event", 0) > 0 and not self.api_key:
            raise ConfigError("api_key: events are in the mix, and POST /events needs the service's API key")
        if self.planned_requests > self.max_requests:
            raise ConfigError(
                f"the steps plan {self.planned_requests} requests, more than max_requests={self.max_requests}"
            )
        if self.planned_seconds > self.max_duration_s:
            raise ConfigError(
                f"the steps take {self.planned_seconds:.0f} s, "
                f"more than max_duration_s={self.max_duration_s:.0f}"
            )
        if not self.targets:
            raise ConfigError(f"url: expected http(s)://HOST[:PORT], got {self.url!r}")
        for target in self.targets:
            check_target(target, self.allow_remote)

    @property
    def targets(self) -> tuple[str, ...]:
        """The base URLs in ``url`` (comma-separated): replicas of one service, sent requests in
        turn, one each, so that a fleet behind no load balancer gets an even share per replica."""
        return tuple(part.strip().rstrip("/") for part in self.url.split(",") if part.strip())

    @property
    def planned_requests(self) -> int:
        """Expected number of requests over all steps (Poisson arrivals vary around it)."""
        return round(sum(rate * self.step_seconds for rate in self.rates))

    @property
    def planned_seconds(self) -> float:
        """Steps plus the drain after each (in-flight requests get up to ``timeout_s`` to finish)."""
        return len(self.rates) * (self.step_seconds + self.timeout_s)


def check_target(url: str, allow_remote: tuple[str, ...]) -> None:
    """Refuse any target but loopback, unless its host was passed explicitly with ``--allow-remote``.

    A load test is indistinguishable from an attack to the machine receiving it, so a remote target
    must be named on purpose, not reached through a default or a typo.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"url: expected http(s)://HOST[:PORT], got {url!r}")
    host = parts.hostname
    if host in allow_remote:
        return
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise ConfigError(f"url: cannot resolve host {host!r} ({exc})") from exc
    if not all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses):
        raise ConfigError(
            f"url: {host!r} is not a loopback address; pass --allow-remote {host} to load-test it on purpose"
        )
