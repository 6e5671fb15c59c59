"""How the decoder is laid out on the CPUs this process may use.

``cpu_limit`` reads what the process may really use: its affinity mask, and the CPU quota of its
cgroup (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), which is what a Kubernetes
``limits: cpu`` or ``docker --cpus`` sets while the affinity mask still shows every CPU of the node.
``DecodingLayout.for_cpus`` turns that count into the batcher's shape; none of it is a setting, since
each value follows from the CPU count and was measured (the benchmark is named beside it).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DecodingLayout", "cpu_limit"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def cpu_limit(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """CPUs this process may use: the affinity mask, lowered to the cgroup's CPU quota (rounded down,
    at least 1: a thread beyond the quota only gets the process throttled).

    ``cgroup_root`` and ``proc_cgroup`` are where the cgroup file system is mounted and the file
    naming this process's cgroups (seams for tests: a fake root directory).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, math.floor(quota))
    return max(1, cpus)


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup or any ancestor, or None if none.

    Inside a container the cgroup file system is usually the container's own cgroup mounted at the
    root, while ``/proc/self/cgroup`` names the path on the host; so the named path is looked up
    first, then each of its parents up to the mount point itself.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2 (unified)
            quotas += [q for d in _dirs(cgroup_root, path) if (q := _quota(d, v2=True)) is not None]
        elif "cpu" in controllers.split(","):  # cgroup v1: mounted as cpu or cpu,cpuacct
            for mount in (cgroup_root / controllers, cgroup_root / "cpu", cgroup_root / "cpu,cpuacct"):
                if mount.is_dir():
                    quotas += [q for d in _dirs(mount, path) if (q := _quota(d, v2=False)) is not None]
                    break
    return min(quotas) if quotas else None


def _dirs(mount: Path, path: str) -> list[Path]:
    """``mount/path`` and each of its parents down to ``mount``, those that exist."""
    parts = [p for p in path.strip("/").split("/") if p and p != ".."]
    candidates = [mount.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]
    return [d for d in candidates if d.is_dir()]


def _quota(directory: Path, v2: bool) -> float | None:
    """CPUs the quota in ``directory`` allows (v2 ``cpu.max``, v1 cfs files); None: none or unreadable."""
    try:
        if v2:
            quota, period = (directory / "cpu.max").read_text().split()[:2]
        else:
            quota, period = ((directory / f"cpu.cfs_{name}_us").read_text() for name in ("quota", "period"))
        quota_us, period_us = -1 if quota == "max" else int(quota), int(period)
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


@dataclass(frozen=True)
class DecodingLayout:
    """How the batcher decodes: ``workers`` batches at once, each session with ``threads`` intra-op
    threads, or (``in_loop``) on the event loop itself, step by step; a batch waits ``wait_ms`` for
    more requests before it starts."""

    workers: int
    threads: int
    in_loop: bool
    wait_ms: float

    @classmethod
    def for_cpus(cls, cpus: int) -> DecodingLayout:
        """The layout for a process allowed ``cpus`` CPUs.

        - One batch worker per 4 CPUs (at least 1), the CPUs shared out as intra-op threads. More
          workers decode more in process (``benchmarks/serving.py --workers 2``) but less over HTTP
          (``benchmarks/reliability.py``): the event loop needs a core of its own, and workers
          holding the GIL between graph calls starve it.
        - On a single CPU the event loop decodes each batch itself, step by step (a thread there buys
          no parallelism, only GIL and core hand-offs), and a batch does not wait to fill up: the
          requests it would wait for arrive during the decode anyway
          (``benchmarks/results/ab-gather-wait.json``).
        - With decoding threads a batch waits 2 ms for more requests, so a burst shares one decode.
        """
        workers = max(1, cpus // 4)
        in_loop = cpus == 1
        return cls(workers, max(1, cpus // workers), in_loop, 0.0 if in_loop else 2.0)
