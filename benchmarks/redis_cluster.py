"""A real three-master Redis Cluster on loopback, for the tests (``tests/service/test_cluster.py``) and
``benchmarks.scale_out``: ``redis-server --cluster-enabled yes`` on three ports from ``NODE_PORTS``,
joined by ``redis-cli --cluster create``; a master can be killed and started again on its own folder
(append-only file, by default fsynced on every write, so it comes back with its data).

A cluster node also listens on its bus port, its port + 10000. So the nodes' ports do not come from
``free_port()``: an ephemeral port above 55535 has no bus port at all (the node exits), and a bus port
in the ephemeral range can be taken by any outgoing connection before the node binds it, or before a
killed node is started again on the same port.
"""

from __future__ import annotations

import atexit
import random
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from benchmarks.local_service import probe_client, redis_log_tail, start_redis_server

__all__ = ["NODE_PORTS", "LoopbackCluster", "node_ports"]

#: what Redis adds to a node's port for its cluster bus port
BUS_OFFSET = 10000
#: where nodes' ports are drawn from: port and bus port both below Linux's ephemeral range (32768-60999)
NODE_PORTS = range(11000, 32768 - BUS_OFFSET)
#: milliseconds before the cluster takes a silent master for failed; short so a test waits little
NODE_TIMEOUT_MS = 1000
#: hash slots in every Redis Cluster
SLOTS = 16384
#: seconds: generous, the servers may share the CPUs with a training run
STARTUP_S = 120.0


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def node_ports(count: int) -> list[int]:
    """``count`` random ports from ``NODE_PORTS`` whose ports and bus ports are all free and distinct."""
    chosen: list[int] = []
    taken: set[int] = set()
    for _ in range(1000):
        port = random.choice(NODE_PORTS)
        pair = {port, port + BUS_OFFSET}
        if pair & taken or not all(_bindable(p) for p in pair):
            continue
        chosen.append(port)
        taken |= pair
        if len(chosen) == count:
            return chosen
    raise RuntimeError(f"no {count} free port pairs (port, port + {BUS_OFFSET}) in {NODE_PORTS}")


@dataclass
class LoopbackCluster:
    """The nodes' folders are under ``workdir``; ``appendfsync`` is each node's (``always``: an
    acknowledged write survives a killed master, as the tests need; ``everysec``: as compose and k8s
    run Redis, for measurements comparable with ``start_redis``)."""

    workdir: Path
    appendfsync: str = "always"
    ports: list[int] = field(default_factory=list)
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The ``SIDREC_REDIS_URL`` of the cluster (one node; the client finds the others)."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self, masters: int = 3) -> LoopbackCluster:
        """Starts and joins the nodes; whatever goes wrong, no node is left running."""
        self.ports = node_ports(masters)
        atexit.register(self.stop)  # a session that ends without its fixture's teardown
        try:
            for port in self.ports:
                self.start_node(port)
            nodes = [f"127.0.0.1:{port}" for port in self.ports]
            create = ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"]
            joined = subprocess.run(create, capture_output=True, text=True, timeout=STARTUP_S)
            if joined.returncode != 0:
                raise RuntimeError(
                    f"redis-cli --cluster create exited with {joined.returncode}:\n"
                    f"{joined.stdout}{joined.stderr}{self.logs()}"
                )
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def start_node(self, port: int) -> None:
        self.processes[port] = start_redis_server(
            port,
            self.workdir / str(port),
            persistent=True,
            appendfsync=self.appendfsync,
            timeout_s=STARTUP_S,
            options=[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                "--cluster-announce-ip",
                "127.0.0.1",
                # the live masters keep serving their slots while one is down
                "--cluster-require-full-coverage",
                "no",
            ],
        )

    def wait_ok(self, timeout_s: float = STARTUP_S) -> None:
        """Until every node says ``cluster_state:ok``, knows every node and sees all slots assigned
        and none on a failed master."""
        want = {"cluster_state": "ok", "cluster_known_nodes": str(len(self.ports))}
        want |= {"cluster_slots_assigned": str(SLOTS), "cluster_slots_ok": str(SLOTS)}
        deadline = time.monotonic() + timeout_s
        seen: dict[int, str] = {}
        while True:
            for port in self.ports:
                seen[port] = self._state(port, want)
            if all(state == "ok" for state in seen.values()):
                return
            exited = {port: p.returncode for port, p in self.processes.items() if p.poll() is not None}
            if exited or time.monotonic() > deadline:
                problem = f"nodes exited: {exited}" if exited else f"not within {timeout_s:g} s"
                states = "; ".join(f"{port}: {state}" for port, state in seen.items())
                raise RuntimeError(f"the loopback cluster is not ok ({problem}): {states}{self.logs()}")
            time.sleep(0.1)

    @staticmethod
    def _state(port: int, want: dict[str, str]) -> str:
        """``ok``, or what in the node's ``CLUSTER INFO`` differs from ``want``, or why it did not answer."""
        client = probe_client(port)
        try:
            info = client.cluster("info")
        except redis.RedisError as error:
            return f"{type(error).__name__}: {error}"
        finally:
            client.close()
        wrong = [f"{key}:{info.get(key)}" for key, value in want.items() if info.get(key) != value]
        return ", ".join(wrong) or "ok"

    def logs(self) -> str:
        return "".join(
            f"\nlog of node {port}:\n{redis_log_tail(self.workdir / str(port))}" for port in self.ports
        )

    def kill(self, port: int) -> None:
        """SIGKILL one master: what a crashed machine looks like to the others."""
        process = self.processes.pop(port)
        process.kill()
        process.wait(10)

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.ports[0])

    def stop(self) -> None:
        """Ends every node still running (SIGTERM, SIGKILL past 10 s); safe to call twice."""
        atexit.unregister(self.stop)
        processes = list(self.processes.values())
        self.processes.clear()
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
