"""A real three-master Redis Cluster on loopback for the tests: ``redis-server --cluster-enabled yes``
on three free ports, joined by ``redis-cli --cluster create``; a master can be killed and started
again on its own folder (append-only file fsynced on every write, so it comes back with its data)."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.service.conftest import free_port

__all__ = ["LoopbackCluster"]

#: milliseconds before the cluster takes a silent master for failed; short so a test waits little
NODE_TIMEOUT_MS = 1000


@dataclass
class LoopbackCluster:
    workdir: Path
    ports: list[int] = field(default_factory=list)
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The ``SIDREC_REDIS_URL`` of the cluster (one node; the client finds the others)."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self, masters: int = 3) -> LoopbackCluster:
        self.ports = [free_port() for _ in range(masters)]
        for port in self.ports:
            self.start_node(port)
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=300,  # seconds: generous, the servers may share the CPUs with a training run
        )
        self.wait_ok()
        return self

    def start_node(self, port: int) -> None:
        folder = self.workdir / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                # the live masters keep serving their slots while one is down
                "--cluster-require-full-coverage",
                "no",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=port, socket_connect_timeout=0.2)
        for _ in range(1200):  # up to a minute on a loaded machine
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {port}")

    def wait_ok(self, timeout_s: float = 120.0) -> None:
        """Until every node says ``cluster_state:ok`` (all slots served)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                states = [redis.Redis(port=p).cluster("info")["cluster_state"] for p in self.ports]
                if all(s == "ok" for s in states):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the loopback cluster did not become ok")
            time.sleep(0.1)

    def kill(self, port: int) -> None:
        """SIGKILL one master: what a crashed machine looks like to the others."""
        process = self.processes.pop(port)
        process.kill()
        process.wait(10)

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.ports[0])

    def stop(self) -> None:
        for port in list(self.processes):
            process = self.processes.pop(port)
            process.terminate()
            process.wait(10)
