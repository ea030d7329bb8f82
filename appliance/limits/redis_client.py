"""The one place a Redis client is built, per `[state] redis_mode`, and its nodes looked at.

standalone: `redis.asyncio.Redis` on `redis_url`; sentinel: the master the sentinels name
(`Sentinel(...).master_for`, which asks them again on every new connection, so a failover
is followed without a restart); cluster: `RedisCluster` from seed nodes, which follows
MOVED/ASK and refreshes its slot map itself. The limit store, readiness and doctor all use
what `connect_redis` returns. The password comes from the environment, never the file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from appliance.settings import StateSettings
from appliance.settings.redis import redis_password

RedisClient = Redis | RedisCluster
NodeRole = Literal["primary", "master", "sentinel"]


@dataclass(frozen=True, slots=True)
class NodeState:
    """One node as seen now: its role, address and "ok" or why not."""

    role: NodeRole
    address: str
    state: str

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def __str__(self) -> str:
        return f"{self.role} {self.address} {self.state}"


_CLUSTER_ATTEMPTS = 2  # redis-py's default is 16, sleeping 50 ms between the last 8
_POOL_WAIT_S = 2.0  # longest a caller queues for a pooled connection (calls have deadlines)


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The master's pool, queueing callers past max_connections like the standalone pool
    does instead of failing them with "Too many connections"."""


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Connection knobs: the router's (small timeouts, one retry) or doctor's (one attempt)."""

    socket_timeout_s: float = 0.5
    connect_timeout_s: float = 0.5
    retries: int = 1
    max_connections: int = 64


@dataclass
class RedisConnection:
    """The client of one mode, and the sentinels behind it in sentinel mode."""

    mode: str
    client: RedisClient
    sentinel: Sentinel | None = None
    master: str = ""
    endpoints: tuple[str, ...] = field(default=())  # standalone: the URL's host:port

    @property
    def target(self) -> str:
        """Where it points, without a password: host:port, or the mode and endpoints."""
        return ",".join(self.endpoints)

    async def nodes(self) -> list[NodeState]:
        """Each primary (cluster), the master the sentinels name (sentinel), or the server."""
        if isinstance(self.client, RedisCluster):
            return await _cluster_nodes(self.client)
        if self.sentinel is not None:
            return [await _sentinel_master(self.sentinel, self.master)]
        return [await _ping("primary", self.target, self.client.ping())]

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.sentinel is not None:
            for node in self.sentinel.sentinels:
                await node.aclose()


def connect_redis(
    state: StateSettings, environ: Mapping[str, str], options: ClientOptions | None = None
) -> RedisConnection:
    """The client `[state]` describes; nothing is sent until it is first used."""
    opts = options or ClientOptions()
    common = _common_kwargs(state, environ, opts)
    if state.redis_mode == "cluster":
        seeds = [ClusterNode(*_host_port(e)) for e in state.redis_endpoints]
        # Redirections and slot-map refreshes happen inside the store's own deadline.
        cluster = RedisCluster(startup_nodes=seeds, max_connections=opts.max_connections, **common)
        # Follow one redirect (MOVED or ASK) but give a TRYAGAIN back after one 50 ms pause, not
        # eight, inside a pipeline other orgs' calls share: the store sends that call again.
        cluster.RedisClusterRequestTTL = _CLUSTER_ATTEMPTS
        return RedisConnection("cluster", cluster, endpoints=state.redis_endpoints)
    if state.redis_mode == "sentinel":
        sentinel_kwargs = {k: v for k, v in common.items() if k not in ("username", "password")}
        sentinel = Sentinel(
            [_host_port(e) for e in state.redis_endpoints],
            sentinel_kwargs=sentinel_kwargs,
            **common,
        )
        master = sentinel.master_for(
            state.redis_sentinel_master,
            connection_pool_class=_BlockingSentinelPool,
            max_connections=opts.max_connections,
            timeout=_POOL_WAIT_S,
        )
        return RedisConnection(
            "sentinel",
            master,
            sentinel,
            state.redis_sentinel_master,
            endpoints=state.redis_endpoints,
        )
    client = _standalone(state, common, opts)
    return RedisConnection("standalone", client, endpoints=(url_target(state.redis_url),))


def _common_kwargs(
    state: StateSettings, environ: Mapping[str, str], opts: ClientOptions
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        # Each store call is bounded by redis_timeout_s; socket timeouts only clean up.
        "socket_timeout": opts.socket_timeout_s,
        "socket_connect_timeout": opts.connect_timeout_s,
        # One immediate retry replaces a stale pooled connection after a restart.
        "retry": Retry(NoBackoff(), opts.retries),
    }
    if state.redis_username:
        kwargs["username"] = state.redis_username
    if (password := redis_password(state, environ)) is not None:
        kwargs["password"] = password
    if state.redis_tls or state.redis_tls_ca_file or state.redis_url.startswith("rediss://"):
        kwargs["ssl"] = True
        if state.redis_tls_ca_file:
            kwargs["ssl_ca_certs"] = state.redis_tls_ca_file
    return kwargs


def _standalone(state: StateSettings, common: dict[str, Any], opts: ClientOptions) -> Redis:
    url = state.redis_url
    if common.pop("ssl", False) and url.startswith("redis://"):
        url = "rediss://" + url.removeprefix("redis://")
    elif url.startswith("unix://"):
        common.pop("ssl_ca_certs", None)
    # A blocking pool queues callers for a connection (each call is still bounded by
    # redis_timeout_s) instead of failing past max_connections.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=opts.max_connections,
        timeout=_POOL_WAIT_S,
        health_check_interval=10,
        **common,
    )
    # The URL's own user and password lose to the keys: the secret may live in the env only.
    pool.connection_kwargs.update({k: common[k] for k in ("username", "password") if k in common})
    return Redis.from_pool(pool)


def url_target(url: str) -> str:
    """host:port (or the socket path) of a Redis URL, without its password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname}:{parts.port or 6379}"


def _host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


async def _ping(role: NodeRole, address: str, call: Any) -> NodeState:
    try:
        await call
    except (RedisError, OSError) as exc:
        return NodeState(role, address, describe(exc))
    return NodeState(role, address, "ok")


async def _cluster_nodes(client: RedisCluster) -> list[NodeState]:
    try:
        await client.initialize()  # the slot map, from any seed that answers
    except (RedisError, OSError) as exc:
        return [NodeState("primary", "-", f"no seed node answered: {describe(exc)}")]
    primaries = sorted(client.get_primaries(), key=lambda n: n.name)
    return list(
        await asyncio.gather(
            *(_ping("primary", n.name, client.ping(target_nodes=n)) for n in primaries)
        )
    )


async def _sentinel_master(sentinel: Sentinel, name: str) -> NodeState:
    try:
        host, port = await sentinel.discover_master(name)
    except (RedisError, OSError) as exc:
        return NodeState("sentinel", name, f"no sentinel names a master: {describe(exc)}")
    return await _ping("master", f"{host}:{port}", _ping_master(sentinel, host, port))


async def _ping_master(sentinel: Sentinel, host: str, port: int) -> None:
    kwargs = dict(sentinel.connection_kwargs)
    client = Redis(host=host, port=port, **kwargs)
    try:
        await client.ping()
    finally:
        await client.aclose()


def describe(exc: BaseException) -> str:
    """The class and the library's message (host:port at most), never a URL or password."""
    text = str(exc)[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = ["ClientOptions", "NodeState", "RedisClient", "RedisConnection", "connect_redis"]
