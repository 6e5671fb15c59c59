"""The CPU limit is read from the cgroup as a container runtime sets it (fake cgroup roots here), and
the decoding layout follows from it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.layout import DecodingLayout, cgroup_cpu_quota, cpu_limit

REPO = Path(__file__).resolve().parents[2]
AFFINITY = len(os.sched_getaffinity(0))


def fake(root: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "proc-self-cgroup").write_text(proc)
    return root, root / "proc-self-cgroup"


def test_cgroup_v2_quota_of_a_container_limits_the_cpus(tmp_path: Path) -> None:
    # docker --cpus 1: the container's own cgroup mounted at the root, /proc/self/cgroup says "/"
    root, proc = fake(tmp_path, "0::/\n", {"cpu.max": "100000 100000\n"})
    assert cgroup_cpu_quota(root, proc) == 1.0
    assert cpu_limit(root, proc) == 1


def test_cgroup_v2_takes_the_tightest_ancestor_and_rounds_down(tmp_path: Path) -> None:
    # a pod limit of 1.5 CPUs on the parent, no limit on the container's own cgroup
    files = {"kubepods/pod1/cpu.max": "150000 100000\n", "kubepods/pod1/ctr/cpu.max": "max 100000\n"}
    root, proc = fake(tmp_path, "0::/kubepods/pod1/ctr\n", files)
    assert cgroup_cpu_quota(root, proc) == 1.5
    assert cpu_limit(root, proc) == 1


def test_cgroup_v2_without_a_limit_leaves_the_affinity(tmp_path: Path) -> None:
    root, proc = fake(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_quota(root, proc) is None
    assert cpu_limit(root, proc) == AFFINITY
    for unreadable in ("", "abc 100000\n", "100000 0\n"):  # ignored, never an error at start-up
        (root / "cpu.max").write_text(unreadable)
        assert cgroup_cpu_quota(root, proc) is None


def test_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    # v1 in a container: /proc/self/cgroup names the host path, the mount holds the container's cgroup
    files = {"cpu,cpuacct/cpu.cfs_quota_us": "100000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}
    root, proc = fake(tmp_path, "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n", files)
    assert cgroup_cpu_quota(root, proc) == 1.0
    assert cpu_limit(root, proc) == 1
    (tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert cgroup_cpu_quota(root, proc) is None


def test_no_cgroup_information_leaves_the_affinity(tmp_path: Path) -> None:
    assert cpu_limit(tmp_path, tmp_path / "missing") == AFFINITY


def test_the_affinity_mask_limits_too() -> None:
    code = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
    code += "from service.layout import cpu_limit; print(cpu_limit())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize(
    ("cpus", "layout"),
    [
        (1, DecodingLayout(workers=1, threads=1, in_loop=True, wait_ms=0.0)),
        (2, DecodingLayout(workers=1, threads=2, in_loop=False, wait_ms=2.0)),
        (8, DecodingLayout(workers=2, threads=4, in_loop=False, wait_ms=2.0)),
    ],
)
def test_decoding_layout_follows_the_cpu_count(cpus: int, layout: DecodingLayout) -> None:
    assert DecodingLayout.for_cpus(cpus) == layout
