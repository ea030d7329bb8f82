"""The etcd config service with real etcd and two router replicas: changes reach both, invalid
documents are refused, etcd outages and compaction are survived, the cache starts a router."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

from appliance.auth.keyring import hash_key
from appliance.configsvc.etcd_client import EtcdClient
from appliance.mock.server import MockBackend
from tests.integration.router_harness import KEY, RouterUnderTest, chat, running_router
from tests.integration.tcp_proxy import tcp_proxy
from tests.services import EtcdServer

WAIT_S = 10.0  # bound of every wait; propagation is reported, not asserted to the ms
NEW_KEY = "rk-rotated-key-for-etcd"


def service(prefix: str, url: str) -> str:
    return f"""
[config_service]
etcd_endpoints = ["{url}"]
prefix = "{prefix}"
timeout_s = 1.0

[health]
cache_s = 0.05
"""


def documents(prefix: str, urls: dict[str, str], weights: dict[str, float]) -> dict[str, bytes]:
    """Backends m0/m1 at `urls`, model chat over both, org acme and its key."""
    out = {
        f"{prefix}backends/{name}": json.dumps(
            {"url": url, "weight": weights.get(name, 1.0), "ttfb_timeout_s": 2.0}
        ).encode()
        for name, url in urls.items()
    }
    routes = [{"backend": name} for name in urls]
    out[f"{prefix}models/chat"] = json.dumps({"backends": routes}).encode()
    out[f"{prefix}orgs/acme"] = b'id = "acme"\n'  # TOML works too
    out[f"{prefix}keys/k-acme"] = json.dumps({"org": "acme", "sha256": hash_key(KEY)}).encode()
    return out


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str) -> float:
    """Poll `check` until true (bounded); returns how long it took."""
    started = time.monotonic()
    while time.monotonic() - started < WAIT_S:
        result = check()
        if result if isinstance(result, bool) else await result:
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {WAIT_S}s: {what}")


def routed(router: RouterUnderTest) -> bool:
    return router.state.current_runtime().routes.get("chat") is not None


def weight(router: RouterUnderTest, backend: str) -> float:
    route = router.state.current_runtime().routes.get("chat")
    assert route is not None
    return next(t.weight for t in route.targets if t.backend_id == backend)


async def status_of(router: RouterUnderTest, key: str = KEY) -> int:
    response = await router.post("/v1/chat/completions", chat(), {"Authorization": f"Bearer {key}"})
    await response.read()
    return response.status


@asynccontextmanager
async def cluster(
    etcd_url: str, replicas: int = 2, state_dirs: list[str] | None = None
) -> AsyncIterator[tuple[EtcdClient, str, list[RouterUnderTest]]]:
    """`replicas` routers on one fresh prefix, configured from etcd with two mock backends."""
    prefix = f"/t-{uuid.uuid4().hex[:8]}/"
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(EtcdClient([etcd_url], timeout_s=2.0))
        routers = [
            await stack.enter_async_context(
                running_router(
                    2,
                    extra=service(prefix, etcd_url),
                    state_dir=state_dirs[i] if state_dirs else None,
                )
            )
            for i in range(replicas)
        ]
        urls = {name: mock.url for name, mock in routers[0].mocks.items()}
        await client.txn_put_delete(documents(prefix, urls, {}))
        for router in routers:
            await eventually(
                lambda r=router: r.state.current_runtime().routes.get("chat") is not None,
                "chat routed",
            )  # type: ignore[misc]
        yield client, prefix, routers


async def test_a_pushed_weight_reaches_every_replica(etcd_server: EtcdServer) -> None:
    """One etcd write changes the weight on both replicas; health state survives it."""
    async with cluster(etcd_server.url) as (client, prefix, routers):
        assert [await status_of(routers[0]) for _ in range(6)] == [200] * 6
        report = await routers[1].state.readiness.check()  # models from etcd count
        assert report.ready, report
        assert report.components["config_service"] == "healthy"
        states = {b: routers[0].state.registry.get(b) for b in ("m0", "m1")}
        seen = {b: s.ewma_s for b, s in states.items()}
        assert any(v is not None for v in seen.values())
        urls = {n: m.url for n, m in routers[0].mocks.items()}
        await client.txn_put_delete(documents(prefix, urls, {"m0": 5.0}))
        took = [await eventually(lambda r=r: weight(r, "m0") == 5.0, "weight 5") for r in routers]
        assert max(took) < WAIT_S
        print(f"weight reached the replicas after {', '.join(f'{t * 1000:.0f} ms' for t in took)}")
        for backend, state in states.items():  # the same state: latency history kept
            assert routers[0].state.registry.get(backend) is state
            assert state.ewma_s == seen[backend]
        revision = routers[0].state.config_service.etcd.applied_revision  # type: ignore[union-attr]
        assert revision == routers[1].state.config_service.etcd.applied_revision  # type: ignore[union-attr]


async def test_degrade_through_one_replica_applies_on_the_other(etcd_server: EtcdServer) -> None:
    """A drain made through replica A's control is in etcd, and replica B routes around it."""
    async with cluster(etcd_server.url) as (_client, _prefix, (a, b)):
        await a.state.control.drain("m0", "maintenance", "oncall", 60.0)
        await eventually(
            lambda: any(o.backend == "m0" for o in b.state.control.overrides()), "B sees it"
        )
        before = b.mocks["m0"].stats()["by_path"]
        for _ in range(6):
            assert await status_of(b) == 200
        assert b.mocks["m0"].stats()["by_path"] == before  # nothing reached the drained backend
        await a.state.control.restore("m0", "done", "oncall")
        await eventually(lambda: not b.state.control.overrides(), "B sees the restore")


async def test_an_invalid_document_is_refused_and_the_old_config_keeps_serving(
    etcd_server: EtcdServer,
) -> None:
    """A bad document (wrong type, or a model naming an unknown backend) changes nothing."""
    async with cluster(etcd_server.url) as (client, prefix, routers):
        revisions = [r.state.config_service.etcd.applied_revision for r in routers]  # type: ignore[union-attr]
        await client.put(f"{prefix}backends/m0", b'{"url": "http://x", "weight": "heavy"}')
        bad_model = json.dumps({"backends": [{"backend": "ghost"}]}).encode()
        await client.put(f"{prefix}models/chat", bad_model)
        await client.put(f"{prefix}orgs/probe", b'id = "probe"\n')  # a valid change after them
        for router, before in zip(routers, revisions, strict=True):
            etcd = router.state.config_service.etcd
            assert etcd is not None
            await eventually(lambda e=etcd, r=before: e.revision == r + 3, "seen")  # type: ignore[misc]
            # The bad backend document alone keeps its last good version (so that revision
            # applies, unchanged); from the ghost model on, every revision is refused whole.
            assert etcd.applied_revision == before + 1
            assert "models/chat.backends[0].backend: unknown backend 'ghost'" in etcd.problems
            assert weight(router, "m0") == 1.0
            assert await status_of(router) == 200
            events = await router.state.audit.query(kind="config.reject", limit=10)
            assert any(e.subject == f"{prefix}backends/m0" for e in events)


async def test_etcd_outage_keeps_serving_and_readiness_follows(etcd_server: EtcdServer) -> None:
    """etcd stopped: both keep serving, config_service unhealthy; etcd back: healthy."""
    async with cluster(etcd_server.url) as (_client, _prefix, routers):
        etcd_server.stop()
        for router in routers:
            await eventually(lambda r=router: not r.state.config_service.etcd.connected, "noticed")  # type: ignore[union-attr,misc]
            report = await router.state.readiness.check()
            assert report.components["config_service"] == "unhealthy"
            assert not report.ready  # 503: every configured component counts by default
            assert await status_of(router) == 200
        etcd_server.start()
        for router in routers:
            await eventually(lambda r=router: r.state.config_service.etcd.connected, "back")  # type: ignore[union-attr,misc]
            await eventually(lambda r=router: _ready(r), "ready again")


async def test_key_rotation_reaches_every_replica(etcd_server: EtcdServer) -> None:
    """A key added in etcd works on both replicas; removed, it is refused on both."""
    async with cluster(etcd_server.url) as (client, prefix, routers):
        doc = json.dumps({"org": "acme", "sha256": hash_key(NEW_KEY)}).encode()
        await client.put(f"{prefix}keys/k-new", doc)
        for router in routers:
            await eventually(lambda r=router: _works(r, NEW_KEY), "new key accepted")
        await client.delete(f"{prefix}keys/k-new")
        for router in routers:
            await eventually(lambda r=router: _refused(r, NEW_KEY), "removed key refused")


async def _ready(router: RouterUnderTest) -> bool:
    return (await router.state.readiness.check()).ready


async def _works(router: RouterUnderTest, key: str) -> bool:
    return await status_of(router, key) == 200


async def _refused(router: RouterUnderTest, key: str) -> bool:
    return await status_of(router, key) == 401


async def test_compaction_past_the_watch_revision_is_recovered(etcd_server: EtcdServer) -> None:
    """Cut off while etcd changes and compacts: the watch resumes by re-reading the snapshot."""
    prefix = f"/t-{uuid.uuid4().hex[:8]}/"
    async with (
        tcp_proxy(etcd_server.host, etcd_server.port) as proxy,
        EtcdClient([etcd_server.url], timeout_s=2.0) as client,
        running_router(2, extra=service(prefix, proxy.url)) as router,
    ):
        urls = {n: m.url for n, m in router.mocks.items()}
        await client.txn_put_delete(documents(prefix, urls, {}))
        await eventually(
            lambda: router.state.current_runtime().routes.get("chat") is not None, "routed"
        )
        proxy.cut()
        etcd = router.state.config_service.etcd
        assert etcd is not None
        await eventually(lambda: not etcd.connected, "cut off")
        for n in range(2, 5):
            written = await client.txn_put_delete(documents(prefix, urls, {"m1": float(n)}))
        await client.compact(written.revision)
        proxy.restore()
        await eventually(lambda: weight(router, "m1") == 4.0, "recovered after compaction")
        assert etcd.connected


@pytest.mark.parametrize("with_cache", [True, False])
async def test_start_with_etcd_down_uses_the_cache_or_refuses(
    etcd_server: EtcdServer, tmp_path: Path, with_cache: bool
) -> None:
    """etcd down at start: a router with a cache serves from it (config_service unhealthy,
    source "cache"); without one it refuses to start, saying why."""
    state_dir = str(tmp_path / "state")
    prefix = f"/t-{uuid.uuid4().hex[:8]}/"
    mocks = [MockBackend(seed=i) for i in range(2)]
    async with AsyncExitStack() as stack:
        for mock in mocks:
            await mock.start("127.0.0.1", 0)
            stack.push_async_callback(mock.stop)
        if with_cache:
            urls = {f"m{i}": m.url for i, m in enumerate(mocks)}
            async with EtcdClient([etcd_server.url], timeout_s=2.0) as client:
                await client.txn_put_delete(documents(prefix, urls, {}))
            async with running_router(
                1, extra=service(prefix, etcd_server.url), state_dir=state_dir
            ) as first:
                await eventually(lambda: routed(first), "routed")
        proxy = await stack.enter_async_context(tcp_proxy(etcd_server.host, etcd_server.port))
        proxy.cut()
        starting = running_router(1, extra=service(prefix, proxy.url), state_dir=state_dir)
        if not with_cache:
            with pytest.raises(Exception, match="no last-known-good config"):
                async with starting:
                    pass
            return
        async with starting as router:
            assert router.state.current_runtime().routes.get("chat") is not None
            assert await status_of(router) == 200
            report = await router.state.readiness.check()
            assert report.components["config_service"] == "unhealthy"
            proxy.restore()
            etcd = router.state.config_service.etcd
            assert etcd is not None
            await eventually(lambda: etcd.connected, "live again")


async def test_override_changes_while_etcd_is_unreachable_are_refused_with_503(
    etcd_server: EtcdServer,
) -> None:
    """A drain needs etcd (it is shared): refused with 503 store_unavailable, nothing changed."""
    prefix = f"/t-{uuid.uuid4().hex[:8]}/"
    operator = "rka-config-operator"
    token = f'{{ id = "oncall", sha256 = "{hash_key(operator)}", role = "operator" }}'
    admin = f"\n[admin]\ntokens = [{token}]\n"
    async with (
        tcp_proxy(etcd_server.host, etcd_server.port) as proxy,
        EtcdClient([etcd_server.url], timeout_s=2.0) as client,
        running_router(2, extra=service(prefix, proxy.url) + admin) as router,
    ):
        urls = {n: m.url for n, m in router.mocks.items()}
        await client.txn_put_delete(documents(prefix, urls, {}))
        await eventually(lambda: routed(router), "routed")
        proxy.cut()
        async with router.session.post(
            f"{router.admin_url}/v1/admin/backends/m0/drain",
            json={"reason": "maintenance"},
            headers={"Authorization": f"Bearer {operator}"},
        ) as response:
            body = await response.json()
        assert response.status == 503
        assert body["error"]["code"] == "store_unavailable"
        assert router.state.control.overrides() == []
        assert await status_of(router) == 200
