"""Apache Kafka for the tests: one KRaft node (broker and controller in one JVM) on 127.0.0.1.

The broker runs from the jars `.ci/fetch-kafka.sh` copies out of Maven Central into
`.cache/kafka/libs` (or the directory named by CRM_KPI_TEST_KAFKA_LIBS), as
`java -cp 'LIBS/*' kafka.Kafka server.properties`, on free ports with its own work
directory. Usage:

    with ApacheKafka(partitions=4) as kafka:
        kafka.bootstrap            # "127.0.0.1:PORT", the PLAINTEXT listener
        kafka.kill()               # SIGKILL: a broker crash
        kafka.restart()            # same ports, same log dir: a crash and a restart
        kafka.wipe()               # the log dir is gone: topics come back empty, or not at all

Extra listeners (for SSL or SASL tests) are given by name and security protocol,
with their own properties; their ports are free ones, fixed for the broker's life:

    ApacheKafka(
        listeners=[Listener("SASL_PLAINTEXT", "SASL_PLAINTEXT", {"sasl.enabled.mechanisms": "PLAIN"})],
        properties={"sasl.mechanism.inter.broker.protocol": "PLAIN"},
    )
    kafka.address("SASL_PLAINTEXT")

Every method is synchronous (it waits for the broker by polling a Metadata request);
from a coroutine, call the slow ones through `asyncio.to_thread(kafka.restart)`.

One module, though long: it is one concept (a broker process: its configuration,
storage format, start, readiness probe, crash and restart) that no other module shares.
"""

from __future__ import annotations

import atexit
import base64
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = [
    "DEFAULT_LIBS",
    "LIBS_ENV",
    "ApacheKafka",
    "KafkaUnavailable",
    "Listener",
    "Metadata",
    "kafka_libs",
    "kafka_version",
]

ROOT = Path(__file__).resolve().parents[2]
LIBS_ENV = "CRM_KPI_TEST_KAFKA_LIBS"
DEFAULT_LIBS = ROOT / ".cache" / "kafka" / "libs"
FETCH_HINT = "run `bash .ci/fetch-kafka.sh` (it copies the broker's jars from Maven Central)"
NODE_ID = 1
HOST = "127.0.0.1"
_RESERVED_LISTENERS = {"PLAINTEXT", "CONTROLLER"}

_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <File name="server" fileName="${sys:kafka.logs.dir}/server.log">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Root level="WARN"><AppenderRef ref="server"/></Root>
    <!-- One line per start and stop, to time them from the log. -->
    <Logger name="kafka.server.KafkaRaftServer" level="INFO"/>
  </Loggers>
</Configuration>
"""


class KafkaUnavailable(RuntimeError):
    """The broker cannot be run here: its jars or Java are missing."""


def kafka_libs(libs: Path | str | None = None) -> Path:
    """The directory of the broker's jars: `libs`, else $CRM_KPI_TEST_KAFKA_LIBS, else .cache/kafka/libs.

    Raises KafkaUnavailable (saying how to fetch them) when it holds no kafka_2.13 jar.
    """
    given = libs if libs is not None else os.environ.get(LIBS_ENV)
    path = Path(given) if given else DEFAULT_LIBS
    if not path.is_absolute():
        path = ROOT / path  # as .ci/fetch-kafka.sh reads it: from the repository root
    if not any(path.glob("kafka_2.13-*.jar")):
        raise KafkaUnavailable(f"no Apache Kafka jars in {path}: {FETCH_HINT}")
    return path


def kafka_version(libs: Path) -> str:
    """The Kafka version of a libs directory (from its KAFKA_VERSION marker, else the jar's name)."""
    marker = libs / "KAFKA_VERSION"
    if marker.is_file():
        return marker.read_text().strip()
    jar = min(libs.glob("kafka_2.13-*.jar"))
    return jar.name.removeprefix("kafka_2.13-").removesuffix(".jar")


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise KafkaUnavailable("java not on PATH (Apache Kafka 4 needs Java 17+; Debian: default-jdk-headless)")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def new_cluster_id() -> str:
    """A random cluster id as Kafka writes them (URL-safe base64 of 16 bytes, no padding)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass(frozen=True)
class Listener:
    """An extra broker listener: its name, security protocol and its own properties.

    `properties` are written as `listener.name.<name lowercased>.<key>=<value>`, e.g.
    {"plain.sasl.jaas.config": "..."} or {"ssl.keystore.location": "..."}.
    """

    name: str
    protocol: str = "PLAINTEXT"
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Metadata:
    """What a Metadata request to the broker answered."""

    cluster_id: str | None
    brokers: dict[int, tuple[str, int]]
    topics: dict[str, int]
    """Topic name → error code (0: fine)."""
    partitions: dict[tuple[str, int], tuple[int, int]]
    """(topic, partition) → (error code, leader id)."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def string(self) -> str | None:
        n = self.take(">h")
        if n < 0:
            return None
        text = self.data[self.pos : self.pos + n].decode()
        self.pos += n
        return text

    def int32s(self) -> list[int]:
        return [self.take(">i") for _ in range(max(self.take(">i"), 0))]


def fetch_metadata(address: tuple[str, int], timeout: float = 5.0) -> Metadata:
    """One Metadata request (v4, every topic) over a plain socket; raises OSError when it fails."""
    client_id = b"crm-kpi-tests"
    body = struct.pack(">hhih", 3, 4, 1, len(client_id)) + client_id + struct.pack(">ib", -1, 0)
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", _recv_exactly(sock, 4))[0]
        r = _Reader(_recv_exactly(sock, size))
    if r.take(">i") != 1:
        raise OSError("Metadata response with a wrong correlation id")
    r.take(">i")  # throttle time
    brokers = {}
    for _ in range(r.take(">i")):
        node = r.take(">i")
        host = r.string() or ""
        brokers[node] = (host, r.take(">i"))
        r.string()  # rack
    cluster_id = r.string()
    r.take(">i")  # controller id
    topics: dict[str, int] = {}
    partitions: dict[tuple[str, int], tuple[int, int]] = {}
    for _ in range(r.take(">i")):
        error = r.take(">h")
        name = r.string() or ""
        r.take(">b")  # internal
        topics[name] = error
        for _ in range(r.take(">i")):
            p_error = r.take(">h")
            index = r.take(">i")
            leader = r.take(">i")
            r.int32s()  # replicas
            r.int32s()  # in-sync replicas
            partitions[(name, index)] = (p_error, leader)
    return Metadata(cluster_id, brokers, topics, partitions)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise OSError("the broker closed the connection")
        chunks += chunk
    return bytes(chunks)


_live: weakref.WeakSet[ApacheKafka] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    """A test run that ends without `stop()` leaves no JVM behind."""
    for broker in list(_live):
        broker.kill()


class ApacheKafka:
    """One Apache Kafka KRaft node (broker + controller) as a child JVM on 127.0.0.1.

    Nothing runs until `start()` (or `with`); the work directory, ports and cluster id
    are fixed at construction, so files a listener needs (keystores, JAAS files) can be
    written into `workdir` before the start.
    """

    def __init__(
        self,
        *,
        partitions: int = 1,
        listeners: Iterable[Listener] | Mapping[str, str] = (),
        properties: Mapping[str, str | int | bool] | None = None,
        jvm_options: Sequence[str] = (),
        format_args: Sequence[str] = (),
        heap: str = "1g",
        libs: Path | str | None = None,
        start_timeout: float = 120.0,
        stop_timeout: float = 30.0,
    ) -> None:
        """Prepare a node (see `server_properties` for what it runs with).

        partitions: `num.partitions`, the default for topics created without a count.
        listeners: extra listeners, as `Listener`s or {name: security protocol}.
        properties: `server.properties` entries added to (or overriding) the defaults.
        jvm_options: extra JVM flags, e.g. `-Djava.security.auth.login.config=...`.
        format_args: extra `kafka-storage format` arguments, e.g. `--add-scram SCRAM-SHA-256=[name=u,password=p]`.
        libs: the jars' directory (default: `kafka_libs()`).
        """
        self.libs = kafka_libs(libs)
        self.version = kafka_version(self.libs)
        self.java = _java()
        if isinstance(listeners, Mapping):
            listeners = [Listener(name, protocol) for name, protocol in listeners.items()]
        self.listeners = [Listener("PLAINTEXT", "PLAINTEXT"), *listeners]
        names = [listener.name for listener in self.listeners]
        if len(set(names)) != len(names) or _RESERVED_LISTENERS & set(names[1:]):
            raise ValueError(f"listener names must be unique and not PLAINTEXT or CONTROLLER: {names}")
        self.ports: dict[str, int] = {name: _free_port() for name in [*names, "CONTROLLER"]}
        self.partitions = partitions
        self.extra_properties = {k: _prop(v) for k, v in (properties or {}).items()}
        self.jvm_options = list(jvm_options)
        self.format_args = list(format_args)
        self.heap = heap
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.cluster_id = new_cluster_id()
        self.workdir = Path(tempfile.mkdtemp(prefix="apache-kafka-"))
        self.log_dir = self.workdir / "data"
        self.startup_seconds: float | None = None
        """How long the last start took, from launching the JVM (and formatting) to a ready broker."""
        self._proc: subprocess.Popen[bytes] | None = None
        _live.add(self)

    # --- addresses -------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """The PLAINTEXT listener, "127.0.0.1:PORT", for `bootstrap_servers`."""
        return self.address("PLAINTEXT")

    def address(self, listener: str) -> str:
        """The address "127.0.0.1:PORT" of a listener, by name."""
        return f"{HOST}:{self.ports[listener]}"

    @property
    def running(self) -> bool:
        """True while the broker's JVM is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The JVM's process id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    # --- configuration ---------------------------------------------------------------

    def server_properties(self) -> dict[str, str]:
        """The broker's `server.properties`: one node on loopback, single-replica internal topics, quick restarts."""
        extra = self.listeners[1:]
        props = {
            "process.roles": "broker,controller",
            "node.id": str(NODE_ID),
            "controller.quorum.bootstrap.servers": self.address("CONTROLLER"),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listeners": ",".join(
                f"{n}://{self.address(n)}" for n in [*(li.name for li in self.listeners), "CONTROLLER"]
            ),
            "advertised.listeners": ",".join(f"{li.name}://{self.address(li.name)}" for li in self.listeners),
            "listener.security.protocol.map": ",".join(
                ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT", *(f"{li.name}:{li.protocol}" for li in extra)]
            ),
            "log.dirs": str(self.log_dir),
            "num.partitions": str(self.partitions),
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            # Topics come from `crm-kpi topics create`, as in production (docker-compose.yml).
            "auto.create.topics.enable": "false",
            # One node: internal topics cannot be replicated; few partitions make them quick to create.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "5",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "5",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Quick restarts after a crash: the node's new incarnation can register only once the old
            # one's session has expired (9 s by default; too short a session fences a busy broker).
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "3000",
            "initial.broker.registration.timeout.ms": "30000",
            "log.flush.offset.checkpoint.interval.ms": "1000",
            "num.recovery.threads.per.data.dir": "2",
            "num.network.threads": "2",
            "num.io.threads": "4",
        }
        for li in extra:
            prefix = f"listener.name.{li.name.lower()}."
            props.update({prefix + k: v for k, v in li.properties.items()})
        props.update(self.extra_properties)
        return props

    def _write_config(self) -> Path:
        config = self.workdir / "server.properties"
        config.write_text("".join(f"{k}={_escape(v)}\n" for k, v in self.server_properties().items()))
        (self.workdir / "log4j2.xml").write_text(_LOG4J2)
        return config

    def _jvm(self, *options: str) -> list[str]:
        return [
            self.java,
            *options,
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.xml'}",
            f"-Dkafka.logs.dir={self.workdir}",
            *self.jvm_options,
            "-cp",
            f"{self.libs}/*",
        ]

    # --- life cycle ------------------------------------------------------------------

    def start(self) -> ApacheKafka:
        """Format the log dir if it is new, launch the broker and wait until it serves metadata."""
        if self.running:
            raise RuntimeError("the broker is already running")
        began = time.monotonic()
        config = self._write_config()
        if not (self.log_dir / "meta.properties").is_file():
            self._format(config)
        out = open(self.workdir / "broker.out", "ab")  # noqa: SIM115  # the child keeps it
        try:
            self._proc = subprocess.Popen(
                [
                    *self._jvm("-Xms256m", f"-Xmx{self.heap}", "-XX:+UseG1GC", "-XX:+ExitOnOutOfMemoryError"),
                    "kafka.Kafka",
                    str(config),
                ],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a ^C in the terminal reaches the tests, which stop the broker
            )
        finally:
            out.close()
        self._wait_ready(began)
        self.startup_seconds = time.monotonic() - began
        return self

    def _format(self, config: Path) -> None:
        result = subprocess.run(
            [
                *self._jvm("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"),
                "kafka.tools.StorageTool",
                "format",
                # One argument: a random id may start with "-", which argparse would take for an option.
                f"--cluster-id={self.cluster_id}",
                "--config",
                str(config),
                "--standalone",
                *self.format_args,
            ],
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=self.start_timeout,
            check=False,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")[-4000:]
            raise RuntimeError(f"kafka-storage format failed (exit {result.returncode}):\n{output}")

    def metadata(self, timeout: float = 5.0) -> Metadata:
        """Ask the broker for the cluster's metadata (every topic); raises OSError when it does not answer."""
        return fetch_metadata((HOST, self.ports["PLAINTEXT"]), timeout)

    def _ready(self) -> bool:
        try:
            md = self.metadata(timeout=2.0)
        except OSError:
            return False
        return (
            NODE_ID in md.brokers
            and md.cluster_id == self.cluster_id
            and all(error == 0 for error in md.topics.values())
            and all(error == 0 and leader == NODE_ID for error, leader in md.partitions.values())
        )

    def _wait_ready(self, began: float) -> None:
        deadline = began + self.start_timeout
        delay = 0.05
        while not self._ready():
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"Apache Kafka exited with code {self._proc.returncode} before it was ready\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(
                    f"Apache Kafka not ready after {self.start_timeout:.0f}s "
                    f"(no metadata from {self.bootstrap})\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def kill(self) -> None:
        """SIGKILL the broker now: a crash. Its log dir stays for `restart()`."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()

    def terminate(self) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL after `stop_timeout` seconds."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self, *, empty: bool = False, new_cluster: bool = False, clean: bool = False) -> ApacheKafka:
        """Crash the broker (SIGKILL; `clean=True`: SIGTERM) if it runs, and start it on the same ports.

        By default the log dir is kept: every acknowledged record and committed offset is back.
        `empty=True` deletes it first and formats a new one (same cluster id unless `new_cluster`):
        the log goes backwards, topics and group offsets are gone.
        """
        if clean:
            self.terminate()
        else:
            self.kill()
        if empty:
            shutil.rmtree(self.log_dir, ignore_errors=True)
            if new_cluster:
                self.cluster_id = new_cluster_id()
        return self.start()

    def wipe(self, *, new_cluster: bool = False) -> ApacheKafka:
        """`restart(empty=True)`: a broker back with an empty log, as after losing its disk."""
        return self.restart(empty=True, new_cluster=new_cluster)

    def stop(self) -> None:
        """Shut the broker down (SIGTERM, SIGKILL after `stop_timeout`) and delete its work directory."""
        self.terminate()
        shutil.rmtree(self.workdir, ignore_errors=True)
        _live.discard(self)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the broker's log and of its console output."""
        parts = []
        for name in ("server.log", "broker.out"):
            path = self.workdir / name
            tail = path.read_text(errors="replace").splitlines()[-lines:] if path.is_file() else []
            if tail:
                parts.append(f"--- {path} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(parts) or f"(the broker has logged nothing yet in {self.workdir})"

    def __enter__(self) -> ApacheKafka:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"ApacheKafka({self.version}, {self.bootstrap}, {state}, {self.workdir})"


def _prop(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _escape(value: str) -> str:
    """A value as java.util.Properties reads it back (backslashes and line breaks escaped)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n")
