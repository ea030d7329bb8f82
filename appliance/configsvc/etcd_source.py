"""Follow the config documents in etcd: one consistent snapshot, then a watch from its revision.

Every change is applied whole or not at all: the candidate is built from everything etcd
holds now (a document that does not parse keeps its last good version), merged over the
file and validated like a file; only then does it go live, and into the last-known-good
cache. A broken watch, a compaction or a leader change ends in a fresh snapshot read.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from appliance.audit.events import AuditEvent
from appliance.configsvc.documents import (
    OVERRIDES,
    Document,
    DocumentError,
    kind_of,
    merge,
    merged_problems,
    parse_document,
)
from appliance.configsvc.etcd_errors import EtcdError, WatchCompacted
from appliance.configsvc.etcd_types import EventType, Snapshot, WatchBatch
from appliance.configsvc.etcd_watch import EtcdWatch
from appliance.configsvc.live import ApplyError, LiveConfig
from appliance.configsvc.sqlite_cache import CachedSnapshot
from appliance.settings import Settings
from appliance.telemetry.logging import get_logger

_log = get_logger("routerctl.config")
_RETRY_MIN_S, _RETRY_MAX_S = 0.2, 5.0


class ConfigUnavailable(RuntimeError):
    """No etcd and no last-known-good cache: the router cannot know its config."""


class EtcdReader(Protocol):
    async def get_prefix(self, prefix: str, revision: int | None = None) -> Snapshot: ...

    def watch_prefix(self, prefix: str, start_revision: int) -> EtcdWatch: ...


class ConfigCache(Protocol):
    async def save(self, revision: int, documents: Mapping[str, bytes]) -> None: ...

    async def load(self) -> CachedSnapshot | None: ...


class ApplyObserver(Protocol):
    def applied(self, revision: int, source: str, at: float) -> None: ...

    def rejected(self) -> None: ...

    def source(self, name: str) -> None: ...


class EtcdConfigSource:
    def __init__(
        self,
        client: EtcdReader,
        *,
        prefix: str,
        base: Settings,
        live: LiveConfig,
        cache: ConfigCache,
        observer: ApplyObserver,
        audit: Callable[[AuditEvent], None],
        overrides_changed: Callable[[], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self.prefix = prefix
        self.base = base  # the file's settings; a file reload replaces it
        self._live = live
        self._cache = cache
        self._observer = observer
        self._audit = audit
        self._overrides_changed = overrides_changed
        self._clock = clock
        self.view: dict[str, bytes] = {}  # every config document etcd holds, as it holds it
        # The overrides as last seen (cached too): what a router started during an etcd
        # outage routes by, so a drained backend stays drained across a restart.
        self.overrides: dict[str, bytes] = {}
        self.applied: dict[str, Document] = {}  # the documents live now
        self._parsed: dict[str, tuple[bytes, Document | DocumentError]] = {}
        self.revision = 0  # the etcd revision seen (applied or rejected)
        self.applied_revision = 0
        self.connected = False
        self.problems = ""  # why the last candidate was refused ("" when it was applied)
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float) -> None:
        """Apply etcd's config (or, etcd unreachable, the cached one), then follow etcd."""
        try:
            async with asyncio.timeout(timeout_s):
                snapshot = await self._client.get_prefix(self.prefix)
        except (EtcdError, TimeoutError) as exc:
            cached = await self._cache.load()
            if cached is None:
                raise ConfigUnavailable(
                    f"the config service (etcd) is unreachable ({_reason(exc)}) and the state "
                    "dir has no last-known-good config: start etcd, or start this router once "
                    "while etcd is reachable"
                ) from None
            _log.warning(
                "config_from_cache",
                revision=cached.revision,
                error=_reason(exc),
                saved_at=cached.saved_at,
            )
            await self._replace_view(cached.documents, cached.revision, source="cache")
        else:
            self.connected = True
            await self._replace_view(snapshot.items, snapshot.revision, source="etcd")
        self._task = asyncio.create_task(self._follow(), name="config-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def reapply(self) -> None:
        """Merge the current documents over a new file base (after a file reload); ApplyError
        when the result is invalid (the live config stays)."""
        if not await self._rebuild(changed=(), source="etcd" if self.connected else "cache"):
            raise ApplyError(self.problems)

    async def _follow(self) -> None:
        delay = _RETRY_MIN_S
        while True:
            try:
                if not self.connected:
                    snapshot = await self._client.get_prefix(self.prefix)
                    self.connected = True
                    _log.info("config_service_connected", revision=snapshot.revision)
                    await self._replace_view(snapshot.items, snapshot.revision, source="etcd")
                delay = _RETRY_MIN_S
                async with self._client.watch_prefix(self.prefix, self.revision + 1) as watch:
                    async for batch in watch:
                        await self._on_batch(batch)
            except WatchCompacted as exc:
                _log.warning("config_watch_compacted", compact_revision=exc.compact_revision)
                self._disconnected()
            except EtcdError as exc:
                _log.warning("config_service_unreachable", error=_reason(exc))
                self._disconnected()
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, _RETRY_MAX_S)

    def _disconnected(self) -> None:
        if self.connected:
            self.connected = False
            self._observer.source("cache")

    async def _on_batch(self, batch: WatchBatch) -> None:
        changed: list[str] = []
        overrides = False
        for event in batch.events:
            if event.key.startswith(f"{self.prefix}{OVERRIDES}/"):
                overrides = True
                if event.type is EventType.DELETE:
                    self.overrides.pop(event.key, None)
                else:
                    self.overrides[event.key] = event.value
            elif kind_of(self.prefix, event.key) is not None:
                changed.append(event.key)
                if event.type is EventType.DELETE:
                    self.view.pop(event.key, None)
                else:
                    self.view[event.key] = event.value
        self.revision = max(self.revision, batch.revision)
        if changed:
            await self._rebuild(changed, source="etcd")
        if overrides:
            await self._save_cache()
            await self._overrides_changed()

    async def _replace_view(self, items: Mapping[str, bytes], revision: int, source: str) -> None:
        view = {k: v for k, v in items.items() if kind_of(self.prefix, k) is not None}
        marker = f"{self.prefix}{OVERRIDES}/"
        self.overrides = {k: v for k, v in items.items() if k.startswith(marker)}
        changed = [k for k in view.keys() | self.view.keys() if view.get(k) != self.view.get(k)]
        self.view = view
        self.revision = revision
        if changed or not self.applied_revision:
            await self._rebuild(changed, source=source)
        else:
            self._observer.source(source)
        await self._overrides_changed()

    async def _rebuild(self, changed: list[str] | tuple[()], source: str) -> bool:
        """Make the config etcd holds now live, whole, or keep the live one and say why."""
        candidate: dict[str, Document] = {}
        for key, raw in self.view.items():
            parsed = self._parse(key, raw)
            if isinstance(parsed, Document):
                candidate[key] = parsed
            else:
                if key in changed:
                    self._reject(key, parsed.reason)
                if key in self.applied:  # the last good version of this document stays
                    candidate[key] = self.applied[key]
        merged = merge(self.base, candidate)
        problems = merged_problems(merged)
        if not problems:
            try:
                self._live.apply(merged)
            except ApplyError as exc:
                problems = [str(exc)]
        if problems:
            self.problems = "; ".join(problems)
            self._reject(f"{self.prefix}*", self.problems, whole=True)
            self._observer.source(source)
            return False
        self.problems = ""
        self.applied = candidate
        self.applied_revision = self.revision
        await self._cache.save(
            self.revision, {k: self.view[k] for k in candidate if k in self.view}
        )
        self._observer.applied(self.revision, source, self._clock())
        _log.info("config_applied", revision=self.revision, source=source, documents=len(candidate))
        return True

    async def _save_cache(self) -> None:
        """The applied documents and the overrides, at the revision seen."""
        documents = {k: self.view[k] for k in self.applied if k in self.view}
        await self._cache.save(self.revision, {**documents, **self.overrides})

    def _parse(self, key: str, raw: bytes) -> Document | DocumentError:
        known = self._parsed.get(key)
        if known is not None and known[0] == raw:
            return known[1]
        try:
            result: Document | DocumentError = parse_document(self.prefix, key, raw)
        except DocumentError as exc:
            result = exc
        self._parsed[key] = (raw, result)
        return result

    def _reject(self, key: str, reason: str, *, whole: bool = False) -> None:
        self._observer.rejected()
        what = "config_snapshot_rejected" if whole else "config_document_rejected"
        _log.error(what, key=key, revision=self.revision, reason=reason)
        self._audit(
            AuditEvent(
                kind="config.reject",
                time=self._clock(),
                subject=key,
                reason=reason,
                after={"revision": self.revision, "kept_revision": self.applied_revision},
            )
        )


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
