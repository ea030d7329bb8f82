"""The running router's outbox, looked into and drained on an operator's demand (admin API)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import msgspec

from appliance.usage.buffer_report import BufferReport, TopicRow, build_report, sinks_by_topic
from appliance.usage.publisher import Publisher


class TopicCounts(Protocol):
    async def topic_rows(self) -> list[TopicRow]: ...


class PublishingReport(msgspec.Struct, frozen=True):
    consecutive_failures: int
    last_error: str | None
    last_success_at: float | None


class LiveBufferReport(BufferReport, frozen=True):
    publishing: PublishingReport


class ReplayResult(msgspec.Struct, frozen=True):
    sink: str
    dry_run: bool
    published: int  # or, dry, that would be
    remaining: int


class BufferService:
    def __init__(
        self,
        outbox: TopicCounts,
        publisher: Publisher,
        *,
        path: str,
        sink: str,
        clock: Callable[[], float],
    ) -> None:
        self._outbox = outbox
        self._publisher = publisher
        self._path = path
        self._sink = sink
        self._clock = clock

    async def report(self) -> LiveBufferReport:
        base = build_report(
            self._path, await self._outbox.topic_rows(), self._clock(), sinks_by_topic(self._sink)
        )
        state = self._publisher.state
        publishing = PublishingReport(
            state.consecutive_failures, state.last_error, state.last_success_at
        )
        return LiveBufferReport(**msgspec.structs.asdict(base), publishing=publishing)

    async def replay(self, limit: int | None, dry_run: bool) -> ReplayResult:
        """Publish now through the router's own publisher (never beside it: one batch at a
        time, so nothing is sent twice by us). Raises SinkError when the sink fails."""
        if dry_run:
            waiting = await self._waiting()
            would = waiting if limit is None else min(limit, waiting)
            return ReplayResult(self._sink, True, would, waiting)
        published = await self._publisher.replay_now(limit)
        return ReplayResult(self._sink, False, published, await self._waiting())

    async def _waiting(self) -> int:
        return sum(n for _, n, _, _ in await self._outbox.topic_rows())
