"""Routing overrides in etcd (`{prefix}overrides/{id}`), shared by every replica.

An override with a TTL is written under an etcd lease of that length, so it disappears
even if no router is left to purge it. The watch in etcd_source tells every replica to
reload its overrides when one changes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Protocol

import msgspec

from appliance.configsvc.etcd_errors import EtcdError
from appliance.configsvc.etcd_types import KeyValue, Snapshot
from appliance.routing.overrides import Override
from appliance.sqlite_support import StoreError


class EtcdKv(Protocol):
    async def get(self, key: str) -> KeyValue | None: ...

    async def get_prefix(self, prefix: str, revision: int | None = None) -> Snapshot: ...

    async def put(self, key: str, value: bytes, lease: int | None = None) -> int: ...

    async def delete(self, key: str) -> bool: ...

    async def grant(self, ttl_s: int) -> int: ...


class EtcdOverrideStore:
    """Implements routing.ports.OverrideStore; etcd failures become StoreError."""

    def __init__(self, client: EtcdKv, prefix: str, wall: Callable[[], float] = time.time) -> None:
        self._client = client
        self._prefix = f"{prefix}overrides/"
        self._wall = wall
        # The overrides the config source last saw (or cached): read while etcd is down.
        self.last_seen: Callable[[], Mapping[str, bytes]] | None = None

    async def list(self) -> list[Override]:
        try:
            items = (await self._client.get_prefix(self._prefix)).items
        except EtcdError as exc:
            if self.last_seen is None:
                raise StoreError(f"overrides in etcd: {exc}") from None
            items = self.last_seen()
        found = [self._decode(key, raw) for key, raw in items.items()]
        return sorted(found, key=lambda o: (o.created_at, o.id))

    async def put(self, override: Override) -> None:
        try:
            lease = None
            if override.expires_at is not None:
                ttl = max(1, math.ceil(override.expires_at - self._wall()))
                lease = await self._client.grant(ttl)
            await self._client.put(self._key(override.id), msgspec.json.encode(override), lease)
        except EtcdError as exc:
            raise StoreError(f"overrides in etcd: {exc}") from None

    async def delete(self, override_id: str) -> Override | None:
        key = self._key(override_id)
        try:
            found = await self._client.get(key)
            if found is None:
                return None
            await self._client.delete(key)
        except EtcdError as exc:
            raise StoreError(f"overrides in etcd: {exc}") from None
        return self._decode(key, found.value)

    async def purge_expired(self, now: float) -> int:
        """Leases expire overrides in etcd; this only sweeps ones whose lease outlived them."""
        try:
            items = (await self._client.get_prefix(self._prefix)).items
        except EtcdError:
            return 0  # etcd down: its leases expire them; inactive ones are not applied anyway
        expired = [o for o in (self._decode(k, v) for k, v in items.items()) if not o.active(now)]
        for override in expired:
            await self.delete(override.id)
        return len(expired)

    def _key(self, override_id: str) -> str:
        return self._prefix + override_id

    def _decode(self, key: str, raw: bytes) -> Override:
        try:
            return msgspec.json.decode(raw, type=Override)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # Refuse rather than route on a guess (as the SQLite store does).
            raise StoreError(f"override {key} in etcd is not valid: {exc}") from None
