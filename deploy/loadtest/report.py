"""From raw request outcomes to the verdict: per-step percentiles, the table, the JSON and the plot.

A step *passes* when its p99 is within the target and every request of it got a 2xx answer that
passed the correctness checks. Requests the client abandoned (timeout, connection error) count as
failures with the latency they had reached, so an overloaded step can never look fast by dropping
its slowest requests. The capacity is the highest offered rate of a passing step.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PERCENTILES", "LoadTestReport", "Outcome", "StepReport", "summarise_step"]

#: Latency percentiles reported per step (name -> percentile).
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p99.9": 99.9}
#: Invalid responses quoted verbatim per step.
EXAMPLES_PER_STEP = 5


@dataclass(frozen=True)
class Outcome:
    """One request: its kind, HTTP status (or the client-side failure), latency and problems."""

    kind: str
    status: str  # "200", "429", ... or "timeout", "ConnectError", ...
    latency_s: float  # from the scheduled send time to the end of the response
    finished_at: float  # seconds since the step started
    problems: tuple[str, ...] = ()
    target: str = ""  # the base URL it was sent to

    @property
    def ok(self) -> bool:
        return self.status.startswith("2") and not self.problems


@dataclass(frozen=True)
class StepReport:
    """One rate step, as it appears in the JSON report and the table."""

    offered_rps: float  # the step's nominal rate
    duration_s: float
    requests: int
    scheduled_rps: float  # requests / duration: the rate actually drawn (Poisson varies around nominal)
    ok: int
    achieved_rps: float  # valid 2xx answers per second, until the step's last answer
    latency_ms: dict[str, float]  # PERCENTILES plus "max" and "mean"
    status_counts: dict[str, int]
    by_kind: dict[str, int]
    server_errors: int  # 5xx
    client_failures: int  # timeouts and transport errors (no HTTP status)
    invalid_responses: int  # 2xx answers that failed a correctness check
    invalid_examples: list[str]
    within_target: bool
    by_target: dict[str, int] = field(default_factory=dict)  # requests per base URL (several: a fleet)


def summarise_step(
    offered_rps: float, duration_s: float, outcomes: list[Outcome], p99_target_ms: float
) -> StepReport:
    """Percentiles, status counts, correctness and the pass/fail of one step."""
    latencies_ms = np.array([o.latency_s * 1e3 for o in outcomes], dtype=np.float64)  # (requests,)
    if latencies_ms.size:
        latency = {name: float(np.percentile(latencies_ms, q)) for name, q in PERCENTILES.items()}
        latency |= {"max": float(latencies_ms.max()), "mean": float(latencies_ms.mean())}
    else:
        latency = {name: float("nan") for name in [*PERCENTILES, "max", "mean"]}
    statuses = Counter(o.status for o in outcomes)
    invalid = [o for o in outcomes if o.status.startswith("2") and o.problems]
    ok = sum(o.ok for o in outcomes)
    elapsed = max([duration_s, *(o.finished_at for o in outcomes)])
    return StepReport(
        offered_rps=offered_rps,
        duration_s=duration_s,
        requests=len(outcomes),
        scheduled_rps=round(len(outcomes) / duration_s, 3),
        ok=ok,
        achieved_rps=round(ok / elapsed, 3),
        latency_ms={name: round(value, 3) for name, value in latency.items()},
        status_counts=dict(sorted(statuses.items())),
        by_kind=dict(sorted(Counter(o.kind for o in outcomes).items())),
        server_errors=sum(n for status, n in statuses.items() if status.startswith("5")),
        client_failures=sum(n for status, n in statuses.items() if not status[:1].isdigit()),
        invalid_responses=len(invalid),
        invalid_examples=[f"{o.kind}: {'; '.join(o.problems)}" for o in invalid[:EXAMPLES_PER_STEP]],
        within_target=bool(outcomes) and ok == len(outcomes) and latency["p99"] <= p99_target_ms,
        by_target=dict(sorted(Counter(o.target for o in outcomes).items())),
    )


@dataclass
class LoadTestReport:
    """The whole run: what was targeted, every step, and the capacity verdict."""

    command: str
    url: str
    p99_target_ms: float
    config: dict[str, Any]
    model: dict[str, Any]  # GET /v1/model of the target at the start (bundle id, provider, ...)
    steps: list[StepReport] = field(default_factory=list)
    seeding: dict[str, int] = field(default_factory=dict)  # status counts of the history-seeding events

    @property
    def max_rps_within_p99_target(self) -> float | None:
        passing = [step.offered_rps for step in self.steps if step.within_target]
        return max(passing) if passing else None

    def verdict(self) -> str:
        """One sentence that states the capacity found (or that no step met the target)."""
        best = self.max_rps_within_p99_target
        if best is None:
            return f"No step kept p99 <= {self.p99_target_ms:g} ms with every response valid."
        step = next(s for s in self.steps if s.within_target and s.offered_rps == best)
        return (
            f"Highest rate with p99 <= {self.p99_target_ms:g} ms and every response valid: {best:g} req/s "
            f"offered ({step.achieved_rps:.1f} achieved, p99 {step.latency_ms['p99']:.1f} ms)."
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "max_rps_within_p99_target": self.max_rps_within_p99_target,
            "p99_target_ms": self.p99_target_ms,
            "invalid_responses": sum(step.invalid_responses for step in self.steps),
            "server_errors": sum(step.server_errors for step in self.steps),
            "verdict": self.verdict(),
            "command": self.command,
            "url": self.url,
            "model": self.model,
            "config": self.config,
            "seeding": self.seeding,
            "steps": [asdict(step) for step in self.steps],
        }

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    def table(self) -> str:
        """The per-step table printed at the end of a run."""
        header = [
            "offered",
            "scheduled",
            "achieved",
            "requests",
            *PERCENTILES,
            "max",
            "5xx",
            "other err",
            "invalid",
            "pass",
        ]
        rows = [
            [
                f"{s.offered_rps:g}",
                f"{s.scheduled_rps:.1f}",
                f"{s.achieved_rps:.1f}",
                str(s.requests),
                *(f"{s.latency_ms[name]:.1f}" for name in [*PERCENTILES, "max"]),
                str(s.server_errors),
                str(s.requests - s.ok - s.server_errors - s.invalid_responses),
                str(s.invalid_responses),
                "yes" if s.within_target else "no",
            ]
            for s in self.steps
        ]
        widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
        lines = [
            "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
            for row in [header, *rows]
        ]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(
            ["latency in ms from the scheduled send time; rates in req/s", *lines, self.verdict()]
        )

    def plot(self, path: Path) -> None:
        """Latency percentiles against the offered rate, with the target line (log latency axis)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rates = [s.offered_rps for s in self.steps]
        figure, axis = plt.subplots(figsize=(7, 4.5))
        for name in ["p50", "p90", "p99", "p99.9", "max"]:
            axis.plot(rates, [s.latency_ms[name] for s in self.steps], marker="o", label=name)
        axis.axhline(
            self.p99_target_ms, color="red", linestyle="--", label=f"p99 target {self.p99_target_ms:g} ms"
        )
        best = self.max_rps_within_p99_target
        if best is not None:
            axis.axvline(best, color="green", linestyle=":", label=f"capacity {best:g} req/s")
        axis.set_xlabel("offered rate (requests/s, open loop)")
        axis.set_ylabel("latency from scheduled send (ms)")
        axis.set_yscale("log")
        axis.set_title(f"sidrec load test: {self.model.get('bundle_id', self.url)}")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120)
        plt.close(figure)
