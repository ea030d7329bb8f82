"""The usage pipeline's parts as small Protocols: outbox (durable buffer) and sinks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Topic = Literal["usage", "audit"]


class OutboxFull(Exception):
    """The outbox reached usage.max_buffer_mb and on_full is "reject"."""


class SinkError(Exception):
    """A sink could not acknowledge a whole batch: only the items whose seqs are in
    `acknowledged` (delivered before the failure) may be deleted from the outbox."""

    def __init__(self, message: str, acknowledged: Iterable[int] = ()) -> None:
        super().__init__(message)
        self.acknowledged = frozenset(acknowledged)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    seq: int  # increasing, never reused: publishers resume from the last one they saw
    topic: Topic
    key: str  # partition key (the org id)
    record_id: str  # stable id for downstream de-duplication (usage: the request id)
    payload: bytes  # the record as JSON
    created_at: float  # unix seconds


@dataclass(frozen=True, slots=True)
class OutboxStats:
    records: int
    bytes: int
    oldest_created_at: float | None  # None when empty


class Outbox(Protocol):
    async def append(self, topic: Topic, key: str, record_id: str, payload: bytes) -> None:
        """Durable (survives SIGKILL of the process) when it returns; may wait for its batch.

        Raises OutboxFull when full and the policy is "reject".
        """
        ...

    async def peek(self, limit: int, after_seq: int = 0) -> list[OutboxItem]:
        """The oldest items after `after_seq`, in order."""
        ...

    async def delete(self, seqs: Sequence[int]) -> None:
        """Remove acknowledged items."""
        ...

    async def stats(self) -> OutboxStats: ...


class UsageSink(Protocol):
    name: str  # "kafka" | "file" | "stdout" | "none"

    async def open(self) -> None: ...

    async def publish(self, items: Sequence[OutboxItem]) -> None:
        """Acknowledged when it returns (every item); raises SinkError otherwise, naming the
        items it did deliver (if it knows) so that only the others are sent again."""
        ...

    async def close(self) -> None: ...
