"""EtcdClient against real etcd: reads, txns, watches, leases, failover, auth and mutual TLS."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.configsvc.etcd_client import (
    EtcdAuthError,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    EtcdWatch,
    EventType,
    WatchBatch,
    WatchCompacted,
    WatchEvent,
)
from tests.certs import make_certs
from tests.services import EtcdServer, ServiceError, etcd_binary, free_port

pytestmark = pytest.mark.services

# Bound on any wait for etcd; reached only when something is broken.
WAIT_S = 20.0
ROOT_PASSWORD = "root-secret-9f2c"
ROUTER_PASSWORD = "router-secret-41d7"
WRONG_PASSWORD = "wrong-secret-77aa"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def make_client(*urls: str, timeout_s: float = 2.0, **options: Any) -> EtcdClient:
    return EtcdClient(list(urls), timeout_s=timeout_s, **options)


@pytest.fixture
def prefix() -> str:
    return f"test/{uuid.uuid4().hex[:10]}/"


@pytest.fixture
async def client(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with make_client(etcd_server.url) as opened:
        yield opened


async def next_batch(watch: EtcdWatch) -> WatchBatch:
    async with asyncio.timeout(WAIT_S):
        return await anext(watch)


async def collect(watch: EtcdWatch, until_revision: int) -> list[WatchBatch]:
    """Batches from `watch` until one reaches `until_revision`."""
    batches: list[WatchBatch] = []
    async with asyncio.timeout(WAIT_S):
        async for batch in watch:
            batches.append(batch)
            if batch.revision >= until_revision:
                return batches
    raise AssertionError(f"the watch stopped before revision {until_revision}: {batches}")


def flat_events(batches: list[WatchBatch]) -> list[WatchEvent]:
    return [event for batch in batches for event in batch.events]


def flat(batches: list[WatchBatch]) -> list[tuple[EventType, str, bytes, int]]:
    return [(e.type, e.key, e.value, e.mod_revision) for e in flat_events(batches)]


# -- reads and transactions ----------------------------------------------------------------
async def test_get_prefix_reads_every_key_at_one_revision(client: EtcdClient, prefix: str) -> None:
    """A prefix read returns exactly the keys under the prefix with the store's revision, and
    a read at that revision later returns the same items after they changed."""
    await client.put(prefix + "a", b"1")
    await client.put(prefix + "b", b"2")
    # The first key after the prefix's range: must not be included.
    last = await client.put(prefix[:-1] + "0", b"outside")
    snapshot = await client.get_prefix(prefix)
    assert snapshot.items == {prefix + "a": b"1", prefix + "b": b"2"}
    assert snapshot.revision == last

    await client.put(prefix + "a", b"changed")
    assert await client.delete(prefix + "b")
    assert await client.get_prefix(prefix, revision=snapshot.revision) == snapshot
    now = await client.get_prefix(prefix)
    assert now.items == {prefix + "a": b"changed"}
    assert now.revision > snapshot.revision


async def test_get_prefix_reads_past_one_page(client: EtcdClient, prefix: str) -> None:
    """More keys than one range page (1000) all come back, at the revision of the last write."""
    revision = 0
    for batch in range(11):
        puts = {f"{prefix}{batch:02}-{i:03}": f"{batch}/{i}".encode() for i in range(100)}
        revision = (await client.txn_put_delete(puts)).revision
    snapshot = await client.get_prefix(prefix)
    assert len(snapshot.items) == 1100
    assert snapshot.items[f"{prefix}10-099"] == b"10/99"
    assert snapshot.revision == revision


async def test_get_returns_value_and_revisions_or_none(client: EtcdClient, prefix: str) -> None:
    """get() returns the value with its revisions, and None for a missing key."""
    created = await client.put(prefix + "k", b"v1")
    modified = await client.put(prefix + "k", b"\x00\xffbinary")
    kv = await client.get(prefix + "k")
    assert kv is not None
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
        prefix + "k", b"\x00\xffbinary", created, modified, 2, 0,
    )  # fmt: skip
    assert await client.get(prefix + "missing") is None
    assert not await client.delete(prefix + "missing")


async def test_txn_writes_all_or_nothing(client: EtcdClient, prefix: str) -> None:
    """A txn whose compare holds applies every put and delete at one revision; a txn whose
    compare fails (the prefix changed since the expected revision) writes nothing."""
    await client.put(prefix + "a", b"1")
    await client.put(prefix + "b", b"2")
    before = await client.get_prefix(prefix)

    applied = await client.txn_put_delete(
        {prefix + "a": b"10", prefix + "c": b"30"}, [prefix + "b"],
        expect_revision=before.revision, compare_prefix=prefix,
    )  # fmt: skip
    assert applied.succeeded
    after = await client.get_prefix(prefix)
    assert after.items == {prefix + "a": b"10", prefix + "c": b"30"}
    assert after.revision == applied.revision > before.revision
    assert {(await client.get(prefix + k)).mod_revision for k in "ac"} == {applied.revision}  # type: ignore[union-attr]

    stale = await client.txn_put_delete(
        {prefix + "a": b"99", prefix + "d": b"4"}, [prefix + "c"],
        expect_revision=before.revision, compare_prefix=prefix,
    )  # fmt: skip
    assert not stale.succeeded
    assert stale.revision == applied.revision
    assert await client.get_prefix(prefix) == after


async def test_txn_compares_the_written_keys_without_a_prefix(
    client: EtcdClient, prefix: str
) -> None:
    """Without compare_prefix the compare covers the keys written: a change to one of them
    fails the txn, a change elsewhere does not."""
    start = await client.put(prefix + "a", b"1")
    await client.put(prefix + "other", b"x")
    ok = await client.txn_put_delete({prefix + "b": b"2"}, [prefix + "a"], expect_revision=start)
    assert ok.succeeded
    failed = await client.txn_put_delete({prefix + "b": b"3"}, expect_revision=start)
    assert not failed.succeeded
    assert (await client.get_prefix(prefix)).items == {prefix + "b": b"2", prefix + "other": b"x"}


async def test_txn_refuses_a_key_both_put_and_deleted(client: EtcdClient, prefix: str) -> None:
    """Putting and deleting the same key in one txn is refused before anything is sent."""
    with pytest.raises(ValueError, match="both put and deleted"):
        await client.txn_put_delete({prefix + "a": b"1"}, [prefix + "a"])
    assert (await client.get_prefix(prefix)).items == {}


# -- watch ---------------------------------------------------------------------------------
async def test_watch_delivers_changes_in_order(client: EtcdClient, prefix: str) -> None:
    """A watch from a snapshot's revision + 1 receives later puts and deletes in order, with
    both writes of a txn in one batch, and nothing from outside the prefix."""
    snapshot = await client.get_prefix(prefix)
    async with client.watch_prefix(prefix, snapshot.revision + 1) as watch:
        r1 = await client.put(prefix + "a", b"1")
        await client.put(prefix[:-1] + "0", b"outside")
        r2 = await client.put(prefix + "b", b"2")
        txn = await client.txn_put_delete({prefix + "c": b"3"}, [prefix + "a"])
        batches = await collect(watch, txn.revision)
    put, delete = EventType.PUT, EventType.DELETE
    assert flat(batches) == [
        (put, prefix + "a", b"1", r1),
        (put, prefix + "b", b"2", r2),
        (put, prefix + "c", b"3", txn.revision),
        (delete, prefix + "a", b"", txn.revision),
    ]
    [txn_batch] = [b for b in batches if b.revision == txn.revision]
    assert len(txn_batch.events) == 2


async def test_watch_resumes_after_etcd_is_killed(etcd_server: EtcdServer, prefix: str) -> None:
    """When etcd dies the watch raises EtcdUnavailable; after a restart a new watch from the
    last batch's revision + 1 receives exactly the writes made since."""
    async with make_client(etcd_server.url) as client:
        first = await client.put(prefix + "a", b"1")
        async with client.watch_prefix(prefix, first) as watch:
            seen = await collect(watch, first)
            etcd_server.kill()
            with pytest.raises(EtcdUnavailable, match="watch stream"):
                await next_batch(watch)
            with pytest.raises(StopAsyncIteration):
                await anext(watch)
        with pytest.raises(EtcdUnavailable):
            await client.get(prefix + "a")

        etcd_server.start()
        await client.put(prefix + "b", b"2")
        deleted = await client.txn_put_delete({}, [prefix + "a"])
        async with client.watch_prefix(prefix, seen[-1].revision + 1) as again:
            batches = await collect(again, deleted.revision)
    assert [(e.type, e.key) for e in flat_events(batches)] == [
        (EventType.PUT, prefix + "b"),
        (EventType.DELETE, prefix + "a"),
    ]


async def test_watch_fails_when_its_member_freezes(etcd_server: EtcdServer, prefix: str) -> None:
    """A frozen member (connections open, nothing answers) ends the watch with EtcdUnavailable
    after the quiet-stream check, and requests and new watches time out with EtcdUnavailable."""
    async with make_client(etcd_server.url, timeout_s=1.0, watch_check_s=0.5) as client:
        async with client.watch_prefix(prefix, 0) as watch:
            etcd_server.pause()
            try:
                with pytest.raises(EtcdUnavailable, match="went quiet"):
                    await next_batch(watch)
                with pytest.raises(EtcdUnavailable, match="no answer within 1 s"):
                    await client.get(prefix + "a")
                with pytest.raises(EtcdUnavailable, match="no answer within 1 s"):
                    await client.watch_prefix(prefix, 0).start()
            finally:
                etcd_server.resume()
        assert await client.get(prefix + "a") is None


async def test_watch_from_a_compacted_revision_raises(client: EtcdClient, prefix: str) -> None:
    """A watch (or a read) from before the compacted revision raises WatchCompacted carrying
    the compact revision; a watch from that revision works."""
    r1 = await client.put(prefix + "a", b"1")
    r2 = await client.put(prefix + "a", b"2")
    await client.compact(r2)
    async with client.watch_prefix(prefix, r1) as watch:
        with pytest.raises(WatchCompacted) as caught:
            await next_batch(watch)
    assert caught.value.compact_revision == r2
    with pytest.raises(EtcdError, match="compacted"):
        await client.get_prefix(prefix, revision=r1)
    async with client.watch_prefix(prefix, r2) as watch:
        assert flat(await collect(watch, r2)) == [(EventType.PUT, prefix + "a", b"2", r2)]


# -- leases --------------------------------------------------------------------------------
async def test_lease_expiry_deletes_its_key(client: EtcdClient, prefix: str) -> None:
    """A key put with a short lease is deleted by etcd when the lease expires (seen as a
    delete event), after which keepalive reports the lease gone."""
    lease = await client.grant(1)
    assert await client.keepalive(lease) > 0
    written = await client.put(prefix + "ttl", b"x", lease=lease)
    kv = await client.get(prefix + "ttl")
    assert kv is not None
    assert kv.lease == lease
    async with client.watch_prefix(prefix, written + 1) as watch:
        [batch] = await collect(watch, written + 1)
    assert [(e.type, e.key) for e in batch.events] == [(EventType.DELETE, prefix + "ttl")]
    assert await client.get(prefix + "ttl") is None
    assert await client.keepalive(lease) == 0


async def test_revoke_deletes_the_lease_keys_at_once(client: EtcdClient, prefix: str) -> None:
    """revoke() removes a lease's keys immediately; revoking it again is not an error."""
    lease = await client.grant(600)
    await client.put(prefix + "a", b"1", lease=lease)
    await client.revoke(lease)
    assert await client.get(prefix + "a") is None
    await client.revoke(lease)


# -- endpoints and status ------------------------------------------------------------------
async def test_a_dead_first_endpoint_fails_over_to_the_next(
    etcd_server: EtcdServer, prefix: str
) -> None:
    """With the first endpoint refusing connections, reads, writes, watches and status all
    go to the second one."""
    dead = f"http://127.0.0.1:{free_port()}"
    async with make_client(dead, etcd_server.url) as client:
        async with client.watch_prefix(prefix, 0) as watch:
            assert watch.endpoint == etcd_server.url
            written = await client.put(prefix + "a", b"1")
            assert flat(await collect(watch, written)) == [
                (EventType.PUT, prefix + "a", b"1", written)
            ]
        assert (await client.get_prefix(prefix)).items == {prefix + "a": b"1"}
        assert (await client.status()).endpoint == etcd_server.url


async def test_no_endpoint_answering_raises_unavailable(prefix: str) -> None:
    """When every endpoint refuses, EtcdUnavailable names each of them."""
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    async with make_client(*dead) as client:
        with pytest.raises(EtcdUnavailable) as caught:
            await client.get(prefix + "a")
        with pytest.raises(EtcdUnavailable):
            await client.watch_prefix(prefix, 0).start()
    assert all(url in str(caught.value) for url in dead)


async def test_a_closed_client_refuses_requests(etcd_server: EtcdServer, prefix: str) -> None:
    """A client that is not open says so instead of opening connections behind its back."""
    client = make_client(etcd_server.url)
    with pytest.raises(EtcdError, match="not open"):
        await client.get(prefix + "a")


async def test_bad_endpoints_are_refused_without_echoing_secrets() -> None:
    """An endpoint with credentials, a path or another scheme is refused at construction."""
    with pytest.raises(ValueError, match="must not carry credentials") as caught:
        EtcdClient(["http://root:hunter2@127.0.0.1:2379"])
    assert "hunter2" not in str(caught.value)
    for url in ("127.0.0.1:2379", "unix:///tmp/etcd.sock", "http://127.0.0.1:2379/v3"):
        with pytest.raises(ValueError, match="etcd endpoint"):
            EtcdClient([url])


async def test_status_reports_version_revision_and_leader(
    client: EtcdClient, etcd_server: EtcdServer, prefix: str
) -> None:
    """status() reports the server version, the current revision, the leader and the db size,
    from any endpoint or from the one asked."""
    written = await client.put(prefix + "a", b"1")
    status = await client.status()
    assert status.version.startswith("3.")
    assert status.revision == written
    assert status.leader == status.member_id != 0
    assert status.db_size > 0
    assert (await client.status(etcd_server.url)).endpoint == etcd_server.url


# -- auth ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """An etcd with auth on: root, and user "router" that may use "config/" only."""
    server = EtcdServer(etcd_binary(), tmp_path_factory.mktemp("etcd-auth"))
    try:
        server.start()
        server.enable_auth(ROOT_PASSWORD, {"router": (ROUTER_PASSWORD, "config/")})
        yield server
    finally:
        server.retire()


async def test_auth_wrong_password_fails_cleanly(auth_etcd: EtcdServer) -> None:
    """A wrong password raises EtcdAuthError naming the user, never the password."""
    async with make_client(auth_etcd.url, username="router", password=WRONG_PASSWORD) as client:
        with pytest.raises(EtcdAuthError, match="router") as caught:
            await client.get("config/a")
        with pytest.raises(EtcdAuthError):
            await client.watch_prefix("config/", 0).start()
    assert WRONG_PASSWORD not in str(caught.value)
    assert "authentication failed" in str(caught.value)


async def test_auth_without_credentials_says_to_configure_them(auth_etcd: EtcdServer) -> None:
    """A client without credentials on an auth-enabled etcd gets EtcdAuthError saying so."""
    async with make_client(auth_etcd.url) as client:
        with pytest.raises(EtcdAuthError, match="configure a username and password"):
            await client.get("config/a")
        with pytest.raises(EtcdAuthError, match="configure a username and password"):
            await client.watch_prefix("config/", 0).start()


async def test_auth_right_password_works_within_its_permissions(auth_etcd: EtcdServer) -> None:
    """The right password reads, writes and watches the user's prefix; other keys are
    refused with EtcdAuthError."""
    async with make_client(auth_etcd.url, username="router", password=ROUTER_PASSWORD) as client:
        async with client.watch_prefix("config/", 0) as watch:
            written = await client.put("config/a", b"1")
            assert flat(await collect(watch, written)) == [
                (EventType.PUT, "config/a", b"1", written)
            ]
        assert (await client.get_prefix("config/")).items["config/a"] == b"1"
        with pytest.raises(EtcdAuthError, match="permission denied"):
            await client.put("elsewhere/a", b"1")
        with pytest.raises(EtcdAuthError, match="permission denied"):
            await client.watch_prefix("elsewhere/", 0).start()
    assert ROUTER_PASSWORD not in repr(client)


async def test_auth_logs_in_again_when_the_token_is_invalidated(auth_etcd: EtcdServer) -> None:
    """After etcd drops the user's tokens (here: root resets its password), the client logs in
    again once and both requests and new watches keep working."""
    router = {"name": "router", "password": ROUTER_PASSWORD}
    async with make_client(auth_etcd.url, username="router", password=ROUTER_PASSWORD) as client:
        await client.put("config/stale", b"1")
        for round_ in range(2):
            before = str(auth_etcd.gateway("/v3/auth/authenticate", router)["token"])
            root = auth_etcd.gateway(
                "/v3/auth/authenticate", {"name": "root", "password": ROOT_PASSWORD}
            )["token"]
            auth_etcd.gateway("/v3/auth/user/changepw", router, str(root))
            with pytest.raises(ServiceError, match="invalid auth token"):
                auth_etcd.gateway("/v3/kv/range", {"key": b64("config/stale")}, before)
            if round_ == 0:
                assert (await client.get("config/stale")) is not None
            else:
                async with client.watch_prefix("config/", 0) as watch:
                    written = await client.put("config/stale", b"2")
                    assert flat(await collect(watch, written))[-1][2] == b"2"


# -- TLS -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """An etcd serving https only to clients with a certificate from the test CA."""
    tls = make_certs(tmp_path_factory.mktemp("etcd-certs"))
    server = EtcdServer(etcd_binary(), tmp_path_factory.mktemp("etcd-tls"), tls=tls)
    try:
        server.start()
        yield server
    finally:
        server.retire()


async def test_tls_with_client_certificate_works(tls_etcd: EtcdServer, prefix: str) -> None:
    """Over mutual TLS the client writes, reads, watches and reads status."""
    tls = tls_etcd.tls
    assert tls is not None
    assert tls_etcd.url.startswith("https://")
    async with make_client(tls_etcd.url, ca_file=tls.ca_file, cert_file=tls.client_cert_file,
                           key_file=tls.client_key_file) as client:  # fmt: skip
        async with client.watch_prefix(prefix, 0) as watch:
            written = await client.put(prefix + "a", b"1")
            assert flat(await collect(watch, written)) == [
                (EventType.PUT, prefix + "a", b"1", written)
            ]
        assert (await client.get_prefix(prefix)).items == {prefix + "a": b"1"}
        assert (await client.status()).revision == written


async def test_tls_without_client_certificate_fails_clearly(
    tls_etcd: EtcdServer, prefix: str
) -> None:
    """Without a client certificate the handshake is refused: EtcdAuthError says so."""
    tls = tls_etcd.tls
    assert tls is not None
    async with make_client(tls_etcd.url, ca_file=tls.ca_file) as client:
        with pytest.raises(EtcdAuthError, match="client certificate") as caught:
            await client.get(prefix + "a")
        with pytest.raises(EtcdAuthError, match="client certificate"):
            await client.watch_prefix(prefix, 0).start()
    assert tls_etcd.url in str(caught.value)


async def test_tls_server_from_an_unknown_ca_is_refused(tls_etcd: EtcdServer, prefix: str) -> None:
    """Without the test CA the client refuses the server's certificate: EtcdAuthError."""
    tls = tls_etcd.tls
    assert tls is not None
    async with make_client(tls_etcd.url, cert_file=tls.client_cert_file,
                           key_file=tls.client_key_file) as client:  # fmt: skip
        with pytest.raises(EtcdAuthError, match="not trusted"):
            await client.get(prefix + "a")


def test_tls_files_that_cannot_be_read_fail_at_construction(tmp_path: Path) -> None:
    """A missing CA file is an EtcdError when the client is built, not at first use."""
    with pytest.raises(EtcdError, match="TLS files"):
        EtcdClient(["https://127.0.0.1:2379"], ca_file=tmp_path / "missing.crt")
