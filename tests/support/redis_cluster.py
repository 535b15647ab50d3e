"""A real Redis Cluster for the tests: N masters (and replicas) of Debian's `redis-server` on 127.0.0.1.

    with RedisCluster(masters=3, replicas=1) as cluster:
        cluster.url                 # "redis://127.0.0.1:PORT" of one node (a cluster client discovers the rest)
        cluster.kill(port)          # SIGKILL one node (a master: its replica is promoted after the node timeout)
        cluster.restart(port)       # the same node again, same port and data directory
        cluster.reshard(n_slots)    # move slots between two masters while clients run (ASK redirects)

Every node gets two free ports (client and cluster bus) and its own directory; the
cluster is formed with `redis-cli --cluster create` and is ready when every node
reports `cluster_state:ok`. Nodes keep no data on disk (no RDB, no AOF): a
restarted master comes back empty, as the failover tests want.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import redis

from stream.devtools.servers import free_port

__all__ = ["ClusterNode", "RedisCluster"]

_NODE_TIMEOUT_MS = 2000  # how long a silent master stays a master: the failover tests wait about this long


@dataclass
class ClusterNode:
    """One redis-server process of the cluster."""

    port: int
    bus_port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)


class RedisCluster:
    """`masters` masters with `replicas` replicas each, formed on free loopback ports."""

    def __init__(self, masters: int = 3, replicas: int = 0, binary: str | None = None) -> None:
        found = binary or shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if found is None or cli is None:
            raise RuntimeError("redis-server and redis-cli are needed (Debian package redis-server)")
        self.binary, self.cli = found, cli
        self.masters, self.replicas = masters, replicas
        self.root = Path(tempfile.mkdtemp(prefix="crm-kpi-cluster-"))
        self.nodes = [
            ClusterNode(port, free_port(), self.root / str(port))
            for port in (free_port() for _ in range(masters * (1 + replicas)))
        ]

    @property
    def url(self) -> str:
        """A redis:// URL of the first node that is running (cluster clients discover the others)."""
        alive = next(n for n in self.nodes if n.proc is not None and n.proc.poll() is None)
        return f"redis://{alive.address}/0"

    def node(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    def start(self, timeout: float = 60.0) -> RedisCluster:
        for node in self.nodes:
            self._launch(node)
        for node in self.nodes:
            _wait(lambda n=node: _pings(n), timeout, f"redis node {node.address}")
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(n.address for n in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        self.wait_healthy(timeout)
        return self

    def _launch(self, node: ClusterNode) -> None:
        node.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            self.binary,
            "--port",
            str(node.port),
            "--cluster-port",
            str(node.bus_port),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(_NODE_TIMEOUT_MS),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(node.workdir),
        ]
        node.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until every running node says `cluster_state:ok` and all 16384 slots are served."""

        def healthy() -> bool:
            for node in self.nodes:
                if node.proc is None or node.proc.poll() is not None:
                    continue
                try:
                    info = node.client().cluster("info")
                except redis.RedisError:
                    return False
                if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", 0)) != 16384:
                    return False
            return True

        _wait(healthy, timeout, "the cluster to report cluster_state:ok")

    def wait_failover(self, timeout: float = 60.0) -> None:
        """After a master was killed: until a replica replaced it and every slot is served again.

        The other nodes keep saying `cluster_state:ok` until they notice the dead master
        (the node timeout), so health alone would return too early.
        """

        def replaced() -> bool:
            try:
                return len(self.master_ports()) == self.masters
            except redis.RedisError:
                return False

        _wait(replaced, timeout, f"a replica to replace the dead master ({self.masters} masters)")
        self.wait_healthy(timeout)

    def master_ports(self) -> list[int]:
        """Ports of the nodes that are masters now (replicas promoted after a failover included)."""
        out = []
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            role = node.client().execute_command("ROLE")[0]
            if (role.decode() if isinstance(role, bytes) else role) == "master":
                out.append(node.port)
        return out

    def kill(self, port: int) -> None:
        """SIGKILL one node: a crash. A killed master's replica takes over after the node timeout."""
        node = self.node(port)
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait()

    def restart(self, port: int, timeout: float = 30.0) -> None:
        """Start a killed node again on its port; it rejoins from its nodes.conf (as a replica if replaced)."""
        node = self.node(port)
        self._launch(node)
        _wait(lambda: _pings(node), timeout, f"redis node {node.address}")

    def reshard(self, slots: int, source: int | None = None, target: int | None = None, timeout: float = 120.0) -> None:
        """Move `slots` hash slots from one master to another with `redis-cli --cluster reshard` (keys included)."""
        masters = self.master_ports()
        source = source if source is not None else masters[0]
        target = target if target is not None else next(p for p in masters if p != source)
        ids = {p: self.node(p).client().execute_command("CLUSTER", "MYID") for p in (source, target)}
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "reshard",
                self.node(source).address,
                "--cluster-from",
                _text(ids[source]),
                "--cluster-to",
                _text(ids[target]),
                "--cluster-slots",
                str(slots),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def begin_migration(self, slot: int, source: int, target: int) -> list[bytes]:
        """Open a migration of `slot` from master `source` to `target` (MIGRATING/IMPORTING, as
        `redis-cli --cluster reshard` does) and move half its keys: the slot stays split between the
        two nodes until `finish_migration`. Returns the keys left on the source (at least one)."""
        ids = {p: _text(self.node(p).client().execute_command("CLUSTER", "MYID")) for p in (source, target)}
        self.node(target).client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        self.node(source).client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        keys: list[bytes] = self.node(source).client().execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100_000)
        assert len(keys) >= 2, f"slot {slot} holds {len(keys)} keys: nothing to split"
        self._migrate(source, target, keys[: len(keys) // 2])
        return keys[len(keys) // 2 :]

    def finish_migration(self, slot: int, source: int, target: int) -> None:
        """Move the slot's remaining keys to `target` and give it the slot on every master."""
        keys: list[bytes] = self.node(source).client().execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100_000)
        self._migrate(source, target, keys)
        target_id = _text(self.node(target).client().execute_command("CLUSTER", "MYID"))
        for port in (target, source, *(p for p in self.master_ports() if p not in (source, target))):
            self.node(port).client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_healthy()

    def _migrate(self, source: int, target: int, keys: list[bytes]) -> None:
        if keys:
            self.node(source).client().execute_command("MIGRATE", "127.0.0.1", target, "", 0, 10_000, "KEYS", *keys)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def _pings(node: ClusterNode) -> bool:
    try:
        return bool(node.client().ping())
    except redis.RedisError:
        return False


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(delay)
        delay = min(0.5, delay * 1.5)
