"""Turn a finished request's facts into its usage record and make it durable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from appliance.telemetry.logging import get_logger
from appliance.usage.ports import Outbox, OutboxFull, Topic
from appliance.usage.record import RequestFacts, build_record, encode_record

_log = get_logger("routerctl.usage")
# New requests are refused a little before the outbox is full, so requests already in
# flight can still write their records ("reject" never drops one it accepted).
_ADMIT_BELOW = 0.95


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

    def full(self) -> bool:
        """True when new requests must be refused (on_full = "reject")."""
        return self._reject and self.buffered_bytes >= self._max_bytes * _ADMIT_BELOW

    async def record(self, facts: RequestFacts) -> None:
        """Commit the request's record; returns once it survives a crash of this process."""
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
