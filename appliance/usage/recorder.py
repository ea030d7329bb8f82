"""Turn a finished request's facts into its usage record and make it durable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from appliance.telemetry.logging import get_logger
from appliance.usage.ports import Outbox, OutboxFull, Topic
from appliance.usage.record import RequestFacts, build_record, encode_record

_log = get_logger("routerctl.usage")
# Room kept in the outbox for each admitted request's record (records are ~0.5 KB), so a
# request admitted under "reject" always has space for its record when it ends.
_RECORD_RESERVE_BYTES = 4096


class UsageObserver(Protocol):
    def recorded(
        self, org: str | None, model: str | None, prompt: int, completion: int, usd: float
    ) -> None: ...

    def record_failed(self, reason: str) -> None: ...


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
    ) -> None:
        self._outbox = outbox
        self._prices = prices
        self._notify = notify
        self._observer = observer
        self._max_bytes = max_bytes
        self._reject = reject_when_full
        self.buffered_bytes = 0  # kept current by the publisher's buffer reports
        self._reserved = 0  # admitted requests whose records are not written yet

    def refusing(self) -> bool:
        """Whether the next request would be refused for a full buffer (reject mode only)."""
        needed = self.buffered_bytes + (self._reserved + 1) * _RECORD_RESERVE_BYTES
        return self._reject and needed > self._max_bytes

    def admit(self) -> bool:
        """Reserve room for one more request's record; False when it must be refused."""
        if self.refusing():
            return False
        self._reserved += 1
        return True

    async def record(self, facts: RequestFacts, *, admitted: bool = True) -> None:
        """Commit the request's record; returns once it survives a crash of this process."""
        if admitted:
            self._reserved = max(0, self._reserved - 1)
        record = build_record(facts, self._prices(facts.model))
        try:
            await self.append("usage", record.org or "", record.id, encode_record(record))
        except OutboxFull:
            self._observer.record_failed("buffer_full")
            _log.error("usage_record_rejected", request_id=record.id, reason="buffer full")
            return
        self._observer.recorded(
            record.org,
            record.model,
            record.prompt_tokens,
            record.completion_tokens,
            record.cost_usd,
        )

    async def append(self, topic: Topic, key: str, record_id: str, payload: bytes) -> None:
        await self._outbox.append(topic, key, record_id, payload)
        self.buffered_bytes += len(payload)
        self._notify()
