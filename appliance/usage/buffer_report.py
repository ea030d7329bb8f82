"""What is waiting in the usage outbox, per topic and per sink: for `buffer inspect` and the
admin API. Pure: built from per-topic rows the outbox (or a read-only reader) supplies."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

TopicRow = tuple[str, int, int, float | None]
"""(topic, records, payload bytes, oldest created_at)."""

# The outbox's per-topic counts; one statement, so a live router's file reads consistently.
TOPIC_ROWS_SQL = (
    "SELECT topic, count(*), coalesce(sum(length(payload)), 0), min(created_at)"
    " FROM outbox GROUP BY topic ORDER BY topic DESC"
)


class TopicReport(msgspec.Struct, frozen=True):
    records: int
    bytes: int
    oldest_created_at: float | None
    sink: str  # where this topic's records go: the lag below is that sink's


class SinkLag(msgspec.Struct, frozen=True):
    records: int
    bytes: int
    oldest_age_s: float | None


class BufferReport(msgspec.Struct, frozen=True):
    path: str
    records: int
    bytes: int
    oldest_created_at: float | None
    oldest_age_s: float | None
    topics: dict[str, TopicReport]
    sinks: dict[str, SinkLag]


def build_report(
    path: str, rows: Iterable[TopicRow], now: float, sink_of: Mapping[str, str]
) -> BufferReport:
    topics = {
        str(t): TopicReport(int(n), int(size), oldest, sink_of.get(str(t), "unknown"))
        for t, n, size, oldest in rows
    }
    sinks: dict[str, SinkLag] = {}
    for topic in topics.values():
        before = sinks.get(topic.sink, SinkLag(0, 0, None))
        age = _age(now, topic.oldest_created_at)
        oldest = max((a for a in (before.oldest_age_s, age) if a is not None), default=None)
        sinks[topic.sink] = SinkLag(
            before.records + topic.records, before.bytes + topic.bytes, oldest
        )
    oldest_at = min(
        (t.oldest_created_at for t in topics.values() if t.oldest_created_at), default=None
    )
    return BufferReport(
        path=path,
        records=sum(t.records for t in topics.values()),
        bytes=sum(t.bytes for t in topics.values()),
        oldest_created_at=oldest_at,
        oldest_age_s=_age(now, oldest_at),
        topics=topics,
        sinks=sinks,
    )


def sinks_by_topic(sink: str) -> dict[str, str]:
    """Which sink each topic's records go to, for `usage.sink = sink` (as app_usage wires it)."""
    return {"usage": sink, "audit": "kafka" if sink == "kafka" else "none"}


def _age(now: float, created_at: float | None) -> float | None:
    return None if created_at is None else max(0.0, now - created_at)
