"""EtcdClient: etcd v3 through etcd's own JSON gateway (the /v3/... endpoints) over aiohttp.

Chosen over aetcd (insecure channel to one host, no re-watch) and a Rust binding: the gateway
gives asyncio, TLS and mutual TLS, several endpoints and user/password auth with no dependency
beyond aiohttp and msgspec, and it ships with every etcd 3.4+. A gateway served with
--client-cert-auth rejects a client certificate that has a CommonName when etcd auth is on:
use a certificate without one plus username/password there.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Self

from appliance.configsvc.etcd_errors import (
    EtcdAuthError,
    EtcdError,
    EtcdUnavailable,
    WatchCompacted,
)
from appliance.configsvc.etcd_transport import EtcdTransport, checked_endpoint, unary
from appliance.configsvc.etcd_types import (
    EtcdStatus,
    EventType,
    KeyValue,
    Snapshot,
    TxnResult,
    WatchBatch,
    WatchEvent,
)
from appliance.configsvc.etcd_watch import EtcdWatch
from appliance.configsvc.etcd_wire import (
    DeleteReply,
    HeaderReply,
    KeepAliveLine,
    LeaseReply,
    RangeReply,
    StatusReply,
    TxnReply,
    classify_stream,
    decode,
    key_bytes,
    key_text,
    prefix_range_end,
)

__all__ = [
    "EtcdAuthError",
    "EtcdClient",
    "EtcdError",
    "EtcdStatus",
    "EtcdUnavailable",
    "EtcdWatch",
    "EventType",
    "KeyValue",
    "Snapshot",
    "TxnResult",
    "WatchBatch",
    "WatchCompacted",
    "WatchEvent",
]

# Keys per range request; later pages are read at the first page's revision.
_PAGE = 1000
_SNAPSHOT_ATTEMPTS = 3
_COMPACTED = "required revision has been compacted"
_LEASE_NOT_FOUND = "requested lease not found"
PathLike = str | Path


class EtcdClient:
    """An asyncio etcd v3 client for one cluster reached through any of `endpoints`.

    open() needs no etcd (it only builds the HTTP pool) and login happens at the first
    request, so a caller can start while etcd is down. Keys are str (UTF-8), values bytes.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        username: str | None = None,
        password: str | None = None,
        ca_file: PathLike | None = None,
        cert_file: PathLike | None = None,
        key_file: PathLike | None = None,
        timeout_s: float = 5.0,
        watch_check_s: float = 5.0,
    ) -> None:
        """`timeout_s` bounds each request to one endpoint; a watch silent for
        `watch_check_s` asks its member for status and fails if it does not answer."""
        if (username is None) != (password is None):
            raise ValueError("etcd username and password go together")
        if (cert_file is None) != (key_file is None):
            raise ValueError("etcd cert_file and key_file go together")
        if watch_check_s <= 0:
            raise ValueError("watch_check_s must be positive")
        tls_wanted = any(url.strip().startswith("https:") for url in endpoints)
        ssl_context = (
            _ssl_context(ca_file, cert_file, key_file)
            if tls_wanted or ca_file or cert_file
            else None
        )
        credentials = (
            (username, password) if username is not None and password is not None else None
        )
        self._transport = EtcdTransport(
            endpoints, credentials=credentials, ssl_context=ssl_context, timeout_s=timeout_s
        )
        self._username = username
        self._watch_check_s = watch_check_s
        self._watches: set[EtcdWatch] = set()

    def __repr__(self) -> str:
        return f"EtcdClient(endpoints={list(self.endpoints)!r}, username={self._username!r})"

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._transport.endpoints

    async def open(self) -> None:
        await self._transport.open()

    async def close(self) -> None:
        """Close every open watch, then the HTTP pool."""
        for watch in list(self._watches):
            await watch.aclose()
        await self._transport.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def get(self, key: str) -> KeyValue | None:
        reply = await self._transport.call(
            "/v3/kv/range", {"key": key_bytes(key)}, unary(RangeReply)
        )
        if not reply.kvs:
            return None
        kv = reply.kvs[0]
        return KeyValue(key=key_text(kv.key), value=kv.value, mod_revision=kv.mod_revision,
                        create_revision=kv.create_revision, version=kv.version,
                        lease=kv.lease)  # fmt: skip

    async def get_prefix(self, prefix: str, revision: int | None = None) -> Snapshot:
        """Every key under `prefix` at one revision: the latest, or `revision` if given."""
        attempt = 1
        while True:
            try:
                return await self._read_prefix(key_bytes(prefix), revision)
            except EtcdError as exc:
                # Compacted between two pages of a latest read: read again from the start.
                retry = revision is None and _COMPACTED in str(exc)
                if not retry or attempt == _SNAPSHOT_ATTEMPTS:
                    raise
                attempt += 1

    async def put(self, key: str, value: bytes, lease: int | None = None) -> int:
        """Write one key (attached to `lease` if given); returns the new revision."""
        payload = {"key": key_bytes(key), "value": value, "lease": lease or 0}
        reply = await self._transport.call("/v3/kv/put", payload, unary(HeaderReply))
        return reply.header.revision

    async def delete(self, key: str) -> bool:
        """Delete one key; whether it existed."""
        reply = await self._transport.call(
            "/v3/kv/deleterange", {"key": key_bytes(key)}, unary(DeleteReply)
        )
        return reply.deleted > 0

    async def txn_put_delete(
        self,
        puts: Mapping[str, bytes],
        deletes: Iterable[str] = (),
        *,
        expect_revision: int | None = None,
        compare_prefix: str | None = None,
    ) -> TxnResult:
        """Write `puts` and delete `deletes` in one transaction, all or nothing.

        With `expect_revision`, it applies only if no key under `compare_prefix` (or, without
        a prefix, none of the keys written) was created or changed after that revision; a
        key deleted since then is not seen by such a compare. etcd caps a txn at 128 writes
        (--max-txn-ops) and refuses a key both put and deleted.
        """
        deleted = list(dict.fromkeys(deletes))
        if clash := sorted(set(puts) & set(deleted)):
            raise ValueError(f"keys both put and deleted in one txn: {clash}")
        compare = _compares(list(puts) + deleted, expect_revision, compare_prefix)
        success: list[dict[str, object]] = [
            {"request_put": {"key": key_bytes(key), "value": value}} for key, value in puts.items()
        ]
        success += [{"request_delete_range": {"key": key_bytes(key)}} for key in deleted]
        reply = await self._transport.call(
            "/v3/kv/txn", {"compare": compare, "success": success}, unary(TxnReply)
        )
        return TxnResult(succeeded=reply.succeeded, revision=reply.header.revision)

    async def grant(self, ttl_s: int) -> int:
        """A new lease of `ttl_s` seconds (etcd may raise very short TTLs); its id."""
        reply = await self._transport.call(
            "/v3/lease/grant", {"TTL": ttl_s, "ID": 0}, unary(LeaseReply)
        )
        return reply.id

    async def keepalive(self, lease_id: int) -> int:
        """Renew a lease once; its remaining TTL in seconds, 0 if it has expired."""

        def first_line(endpoint: str, raw: bytes) -> LeaseReply:
            line = decode(raw.split(b"\n", 1)[0], KeepAliveLine, endpoint)
            if line.error is not None:
                raise EtcdError(str(classify_stream(endpoint, line.error)))
            return line.result or LeaseReply()

        reply = await self._transport.call("/v3/lease/keepalive", {"ID": lease_id}, first_line)
        return reply.ttl

    async def revoke(self, lease_id: int) -> None:
        """End a lease now, deleting its keys; an unknown or expired lease is fine."""
        try:
            await self._transport.call("/v3/lease/revoke", {"ID": lease_id}, unary(HeaderReply))
        except EtcdError as exc:
            if _LEASE_NOT_FOUND not in str(exc):
                raise

    def watch_prefix(self, prefix: str, start_revision: int) -> EtcdWatch:
        """Watch every key under `prefix` from `start_revision` (0: from the next change);
        to follow a snapshot, start at its revision + 1.

        `async with client.watch_prefix(p, rev) as watch: async for batch in watch: ...`
        raises EtcdUnavailable when the stream breaks and WatchCompacted when `start_revision`
        is gone; resume with a new watch from the last batch's revision + 1. Progress
        notifications (empty batches) come at etcd's interval, 10 minutes by default.
        """
        if start_revision < 0:
            raise ValueError("start_revision must be 0 or more")
        start = key_bytes(prefix) or b"\0"
        watch = EtcdWatch(
            self._transport,
            key=start,
            range_end=prefix_range_end(start),
            start_revision=start_revision,
            check_s=self._watch_check_s,
            on_close=self._watches.discard,
        )
        self._watches.add(watch)
        return watch

    async def status(self, endpoint: str | None = None) -> EtcdStatus:
        """Version, revision, leader and size from the first endpoint that answers, or from
        `endpoint` only (for per-member checks)."""
        if endpoint is not None:
            where = checked_endpoint(endpoint)
            reply = await self._transport.status_of(where)
        else:

            def with_endpoint(at: str, raw: bytes) -> tuple[str, StatusReply]:
                return at, decode(raw, StatusReply, at)

            where, reply = await self._transport.call("/v3/maintenance/status", {}, with_endpoint)
        return EtcdStatus(endpoint=where, version=reply.version, revision=reply.header.revision,
                          leader=reply.leader, member_id=reply.header.member_id,
                          db_size=reply.db_size)  # fmt: skip

    async def compact(self, revision: int, *, physical: bool = True) -> None:
        """Drop history before `revision`; with `physical`, wait until it is gone on disk."""
        await self._transport.call(
            "/v3/kv/compaction", {"revision": revision, "physical": physical}, unary(HeaderReply)
        )

    async def _read_prefix(self, start: bytes, revision: int | None) -> Snapshot:
        start = start or b"\0"  # etcd needs a key; "\0" up to "\0" means every key
        end = prefix_range_end(start)
        at = revision or 0
        items: dict[str, bytes] = {}
        key = start
        while True:
            payload = {"key": key, "range_end": end, "revision": at, "limit": _PAGE}
            reply = await self._transport.call("/v3/kv/range", payload, unary(RangeReply))
            at = at or reply.header.revision
            items.update((key_text(kv.key), kv.value) for kv in reply.kvs)
            if not reply.more or not reply.kvs:
                return Snapshot(revision=at, items=items)
            key = reply.kvs[-1].key + b"\0"


def _compares(
    keys: list[str], expect_revision: int | None, compare_prefix: str | None
) -> list[dict[str, object]]:
    if expect_revision is None:
        if compare_prefix is not None:
            raise ValueError("compare_prefix needs expect_revision")
        return []
    # mod_revision < expect + 1 for every key: nothing written after expect_revision.
    unchanged = {"target": "MOD", "result": "LESS", "mod_revision": expect_revision + 1}
    if compare_prefix is not None:
        start = key_bytes(compare_prefix) or b"\0"
        return [{**unchanged, "key": start, "range_end": prefix_range_end(start)}]
    return [{**unchanged, "key": key_bytes(key)} for key in keys]


def _ssl_context(
    ca_file: PathLike | None, cert_file: PathLike | None, key_file: PathLike | None
) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if cert_file is not None and key_file is not None:
            # An empty password instead of OpenSSL's terminal prompt for an encrypted key.
            context.load_cert_chain(str(cert_file), str(key_file), password=lambda: b"")
    except (OSError, ssl.SSLError) as exc:
        raise EtcdError(f"cannot load the etcd TLS files: {exc}") from None
    return context
