"""Turn a finished request's facts into its usage record and make it durable.

New requests are refused (before any backend is called) while a record might find no room:
the outbox is at its bound in "reject" mode, the state dir's disk is under its reserve, or
records are already waiting in memory. A record that still cannot be written (the disk
filled between the check and the commit) is held in memory and written by `flush_held()`
once the outbox takes it again, so the client's answer is never cut; until then readiness
fails. Held records are the one exception to the durability guarantee: a SIGKILL loses them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from appliance.errors import UsageBufferFull
from appliance.sqlite_support import StoreError
from appliance.telemetry.logging import get_logger
from appliance.usage.free_space import FreeSpace
from appliance.usage.ports import Outbox, OutboxFull, Topic
from appliance.usage.record import (
    Bill,
    RequestFacts,
    UsageRecord,
    build_record,
    encode_record,
)

_log = get_logger("routerctl.usage")
# Room kept in the outbox for each admitted request's record (records are ~0.5 KB), so a
# request admitted under "reject" always has space for its record when it ends.
_RECORD_RESERVE_BYTES = 4096
# Held records are bounded by the requests in flight when the disk filled (no new request is
# admitted while any is held); this cap only guards memory against a bug.
MAX_HELD = 10_000
_MB = 1024 * 1024
_NO_ROOM = (
    "The router cannot store usage records right now (its state disk is full or failing);"
    " it accepts no new requests until that is fixed."
)


class UsageObserver(Protocol):
    def recorded(
        self, org: str | None, model: str | None, prompt: int, completion: int, usd: float
    ) -> None: ...

    def record_failed(self, reason: str) -> None:
        """reason: "buffer_full" (refused), "held" (kept in memory), "lost" (never written)."""
        ...

    def held(self, records: int) -> None: ...


@dataclass(frozen=True, slots=True)
class _Held:
    record: UsageRecord
    payload: bytes


class UsageRecorder:
    def __init__(
        self,
        *,
        outbox: Outbox,
        prices: Callable[[str | None], tuple[float, float]],
        notify: Callable[[], None],
        observer: UsageObserver,
        max_bytes: int,
        reject_when_full: bool,
        free_space: FreeSpace | None = None,
    ) -> None:
        self._outbox = outbox
        self._prices = prices
        self._notify = notify
        self._observer = observer
        self._max_bytes = max_bytes
        self._reject = reject_when_full
        self._free = free_space
        self.buffered_bytes = 0  # kept current by the buffer reports
        self._reserved = 0  # admitted requests whose records are not written yet
        self._held: deque[_Held] = deque()

    @property
    def held(self) -> int:
        """Records waiting in memory for the outbox to take them."""
        return len(self._held)

    def refusal(self) -> str | None:
        """Why the next request would be refused, for readiness and logs; None if admitted."""
        if self._held:
            return f"{len(self._held)} usage records held in memory: the outbox cannot be written"
        free = self._free
        if free is not None and free.low:
            return (
                f"state dir disk low: {(free.free_bytes or 0) / _MB:.1f} MB free, below"
                f" state.min_free_mb ({free.reserve_bytes / _MB:g} MB)"
            )
        if self._buffer_full():
            return "usage buffer full; new requests are refused until it drains"
        return None

    def admit(self) -> bool:
        """Reserve room for one more request's record; False when the buffer is full.

        Raises UsageBufferFull itself when the disk is low or records are held, so that the
        client's message says why (the route's own refusal speaks of a full buffer).
        """
        if self._held or (self._free is not None and self._free.low):
            raise UsageBufferFull(_NO_ROOM)
        if self._buffer_full():
            return False
        self._reserved += 1
        return True

    async def record(
        self, facts: RequestFacts, charged: Bill | None = None, *, admitted: bool = True
    ) -> None:
        """Commit the request's record; returns once it survives a crash of this process, or,
        if the outbox cannot be written, once it is held in memory: a full or broken outbox
        never cuts the client's answer."""
        if admitted:
            self._reserved = max(0, self._reserved - 1)
        record = build_record(facts, self._prices(facts.model), charged)
        payload = encode_record(record)
        try:
            await self.append("usage", record.org or "", record.id, payload)
        except OutboxFull:
            self._observer.record_failed("buffer_full")
            _log.error("usage_record_rejected", request_id=record.id, reason="buffer full")
            return
        except StoreError as exc:
            self._hold(_Held(record, payload), exc)
            return
        self._recorded(record)

    async def append(self, topic: Topic, key: str, record_id: str, payload: bytes) -> None:
        await self._outbox.append(topic, key, record_id, payload)
        self.buffered_bytes += len(payload)
        self._notify()

    async def flush_held(self) -> int:
        """Write held records to the outbox, oldest first, until one fails; how many went."""
        written = 0
        while self._held:
            held = self._held[0]
            record = held.record
            try:
                await self.append("usage", record.org or "", record.id, held.payload)
            except (StoreError, OutboxFull):
                break  # still no room: the next flush tries again
            self._held.popleft()
            self._recorded(record)
            written += 1
        if written:
            _log.info("usage_records_written_late", records=written, still_held=len(self._held))
            self._observer.held(len(self._held))
        return written

    def drop_held(self) -> int:
        """At shutdown, after a last flush: count and log what is lost; how many."""
        lost = len(self._held)
        if lost:
            _log.error(
                "usage_records_lost",
                records=lost,
                request_ids=[h.record.id for h in list(self._held)[:20]],
            )
            for _ in range(lost):
                self._observer.record_failed("lost")
            self._held.clear()
            self._observer.held(0)
        return lost

    def _hold(self, held: _Held, exc: StoreError) -> None:
        if len(self._held) >= MAX_HELD:
            self._observer.record_failed("lost")
            _log.error("usage_record_lost", request_id=held.record.id, error=str(exc))
            return
        self._held.append(held)
        self._observer.record_failed("held")
        self._observer.held(len(self._held))
        _log.error(
            "usage_record_held",
            request_id=held.record.id,
            held=len(self._held),
            error=str(exc),  # names the file and SQLite's reason, no record content
        )

    def _recorded(self, record: UsageRecord) -> None:
        self._observer.recorded(
            record.org,
            record.model,
            record.prompt_tokens,
            record.completion_tokens,
            record.cost_usd,
        )

    def _buffer_full(self) -> bool:
        needed = self.buffered_bytes + (self._reserved + 1) * _RECORD_RESERVE_BYTES
        return self._reject and needed > self._max_bytes
