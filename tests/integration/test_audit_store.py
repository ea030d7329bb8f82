"""SqliteAuditStore against real SQLite files."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from appliance.audit.events import AuditEvent
from appliance.audit.sqlite_store import SqliteAuditStore
from appliance.sqlite_support import StoreError

DAY = 86_400.0


def rows_in(path: Path) -> int:
    """Count rows with a separate plain connection, as another process would see them."""
    with closing(sqlite3.connect(path)) as conn:
        (count,) = conn.execute("SELECT count(*) FROM audit_events").fetchone()
    return int(count)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteAuditStore]:
    async with SqliteAuditStore(tmp_path / "state" / "audit.db") as opened:
        yield opened


@pytest.fixture
async def sample(store: SqliteAuditStore) -> list[AuditEvent]:
    """Six events over three orgs, two kinds and two request ids, appended in time order."""
    events = [
        AuditEvent("limit.deny", 100.0, org="acme", request_id="r1"),
        AuditEvent("override.create", 200.0, actor="admin:a", org="acme", subject="ov1"),
        AuditEvent("limit.deny", 300.0, org="globex", request_id="r2"),
        AuditEvent("limit.deny", 400.0, org="acme", request_id="r2"),
        AuditEvent("override.create", 500.0, actor="admin:b", org="initech"),
        AuditEvent("limit.deny", 600.0, org="globex", request_id="r1"),
    ]
    for event in events:
        await store.append(event)
    return events


async def test_append_round_trips_every_field(store: SqliteAuditStore) -> None:
    """Every field, including nested JSON before/after values, comes back equal."""
    event = AuditEvent(
        kind="override.create",
        time=1_700_000_000.123456,
        actor="admin:alice",
        org="acme",
        key_id="key_123",
        request_id="req-9",
        subject="ov-1",
        reason="gpu-a slow ✓",
        before={"weight": 1.0, "tags": ["a", "b"], "nested": {"n": None, "ok": True}},
        after=[1, "two", 3.5, None],
    )
    await store.append(event)
    assert await store.query() == [event]


@pytest.mark.parametrize("value", [None, 0, "", "text", 2.5, False, {"k": [1, {"x": None}]}])
async def test_before_and_after_keep_any_json_value(store: SqliteAuditStore, value: object) -> None:
    """before/after round-trip any JSON value, falsy ones included."""
    event = AuditEvent("x.y", 1.0, before=value, after=value)
    await store.append(event)
    [back] = await store.query()
    assert (back.before, back.after) == (value, value)


async def test_non_json_value_raises_type_error_and_store_stays_usable(
    store: SqliteAuditStore,
) -> None:
    """An event whose before is not JSON-able raises TypeError at append and stores nothing."""
    with pytest.raises(TypeError):
        await store.append(AuditEvent("x.y", 1.0, before=object()))
    await store.append(AuditEvent("x.z", 2.0))
    assert [e.kind for e in await store.query()] == ["x.z"]


async def test_append_is_committed_before_it_returns(tmp_path: Path) -> None:
    """After append returns, another connection already sees the event."""
    path = tmp_path / "audit.db"
    async with SqliteAuditStore(path) as store:
        await store.append(AuditEvent("x.y", 1.0))
        assert rows_in(path) == 1


async def test_appending_the_same_id_twice_stores_it_once(store: SqliteAuditStore) -> None:
    """Re-appending an event with the same id (a retry) is a no-op."""
    event = AuditEvent("x.y", 1.0)
    await store.append(event)
    await store.append(event)
    assert await store.query() == [event]


@pytest.mark.parametrize(
    ("filters", "expected_times"),
    [
        ({"kind": "override.create"}, [500.0, 200.0]),
        ({"org": "acme"}, [400.0, 200.0, 100.0]),
        ({"request_id": "r2"}, [400.0, 300.0]),
        ({"since": 300.0}, [600.0, 500.0, 400.0, 300.0]),  # since is inclusive
        ({"until": 300.0}, [200.0, 100.0]),  # until is exclusive
        ({"kind": "limit.deny", "org": "globex"}, [600.0, 300.0]),
        ({"kind": "limit.deny", "request_id": "r1", "since": 150.0}, [600.0]),
        ({"org": "acme", "since": 150.0, "until": 450.0}, [400.0, 200.0]),
        ({"kind": "limit.deny", "org": "acme", "request_id": "r2", "until": 1e9}, [400.0]),
        ({"org": "nobody"}, []),
    ],
)
async def test_query_filters(
    store: SqliteAuditStore,
    sample: list[AuditEvent],
    filters: dict[str, str | float],
    expected_times: list[float],
) -> None:
    """Each filter alone and in combination returns exactly the matching events, newest first."""
    found = await store.query(**filters)  # type: ignore[arg-type]
    assert [e.time for e in found] == expected_times


async def test_query_is_newest_first_with_ties_in_reverse_append_order(
    store: SqliteAuditStore,
) -> None:
    """Events are ordered by time descending; equal times put the later append first."""
    for kind, at in [("a.x", 5.0), ("b.x", 9.0), ("c.x", 5.0), ("d.x", 1.0)]:
        await store.append(AuditEvent(kind, at))
    assert [e.kind for e in await store.query()] == ["b.x", "c.x", "a.x", "d.x"]


async def test_query_limit(store: SqliteAuditStore, sample: list[AuditEvent]) -> None:
    """limit caps the result to the newest matches; zero or less returns nothing."""
    assert [e.time for e in await store.query(limit=2)] == [600.0, 500.0]
    assert len(await store.query()) == 6
    assert await store.query(limit=0) == []


async def test_since_seq_pages_through_everything_in_append_order(
    store: SqliteAuditStore,
) -> None:
    """Paging with since_seq visits each event once, in append order, with rising seqs."""
    appended = [AuditEvent("x.y", float(i)) for i in range(25)]
    for event in appended:
        await store.append(event)
    seen: list[tuple[int, AuditEvent]] = []
    cursor = 0
    while page := await store.since_seq(cursor, limit=10):
        assert len(page) <= 10
        seen.extend(page)
        cursor = page[-1][0]
    assert [event for _, event in seen] == appended
    seqs = [seq for seq, _ in seen]
    assert seqs == sorted(set(seqs))
    assert await store.since_seq(cursor, limit=10) == []


async def test_seq_is_never_reused_after_pruning_everything(tmp_path: Path) -> None:
    """After every row is pruned, new events get seqs above the old ones, so cursors stay valid."""
    async with SqliteAuditStore(tmp_path / "audit.db", retention_days=1) as store:
        await store.append(AuditEvent("x.y", 0.0))
        [(first_seq, _)] = await store.since_seq(0, 10)
        assert await store.prune(now=10 * DAY) == 1
        await store.append(AuditEvent("x.z", 10 * DAY))
        [(second_seq, event)] = await store.since_seq(first_seq, 10)
    assert second_seq > first_seq
    assert event.kind == "x.z"


async def test_prune_by_age(tmp_path: Path) -> None:
    """prune(now) deletes events older than the retention and returns how many."""
    async with SqliteAuditStore(tmp_path / "audit.db", retention_days=2) as store:
        now = 100 * DAY
        for at in [now - 3 * DAY, now - 2 * DAY - 1, now - 2 * DAY, now - DAY, now]:
            await store.append(AuditEvent("x.y", at))
        assert await store.prune(now) == 2
        assert [e.time for e in await store.query()] == [now, now - DAY, now - 2 * DAY]


async def test_prune_by_max_rows_keeps_the_newest(tmp_path: Path) -> None:
    """Beyond max_rows, prune deletes the oldest events and keeps exactly max_rows."""
    async with SqliteAuditStore(tmp_path / "audit.db", max_rows=3, prune_every=1000) as store:
        for i in range(8):
            await store.append(AuditEvent("x.y", 1000.0 + i))
        assert await store.prune(now=1010.0) == 5
        assert [e.time for e in await store.query()] == [1007.0, 1006.0, 1005.0]
        assert await store.prune(now=1010.0) == 0


async def test_appends_prune_opportunistically(tmp_path: Path) -> None:
    """Every prune_every appends the store prunes itself, so the file stays bounded."""
    path = tmp_path / "audit.db"
    clock_now = 50 * DAY
    async with SqliteAuditStore(
        path, retention_days=1, max_rows=5, prune_every=10, clock=lambda: clock_now
    ) as store:
        await store.append(AuditEvent("old", clock_now - 2 * DAY))
        for i in range(18):
            await store.append(AuditEvent("x.y", clock_now + i))
        assert rows_in(path) == 14  # 19 appends: pruned to 5 at the 10th, then 9 more
        await store.append(AuditEvent("x.y", clock_now + 18))
        assert rows_in(path) == 5
        assert [e.kind for e in await store.query(kind="old")] == []


async def test_events_survive_reopen(tmp_path: Path) -> None:
    """A new store instance on the same file returns the events appended before."""
    path = tmp_path / "audit.db"
    events = [AuditEvent("x.y", float(i), org="acme", after={"i": i}) for i in range(5)]
    async with SqliteAuditStore(path) as first:
        for event in events:
            await first.append(event)
    async with SqliteAuditStore(path) as second:
        assert await second.query(org="acme") == events[::-1]


async def test_many_concurrent_appends_all_land(tmp_path: Path) -> None:
    """200 appends from concurrent tasks are all stored once each, with distinct seqs."""
    path = tmp_path / "audit.db"
    events = [AuditEvent("limit.deny", float(i), request_id=f"r{i}") for i in range(200)]
    async with SqliteAuditStore(path) as store:
        await asyncio.gather(*(store.append(e) for e in events))
        assert rows_in(path) == 200
        page = await store.since_seq(0, limit=1000)
    assert {e.id for _, e in page} == {e.id for e in events}
    assert len({seq for seq, _ in page}) == 200


async def test_close_waits_for_accepted_appends(tmp_path: Path) -> None:
    """Appends started before close() are committed; appends after it raise StoreError."""
    path = tmp_path / "audit.db"
    store = SqliteAuditStore(path)
    await store.open()
    tasks = [asyncio.create_task(store.append(AuditEvent("x.y", float(i)))) for i in range(50)]
    await asyncio.sleep(0)  # let every task enqueue its event
    await store.close()
    await asyncio.gather(*tasks)
    assert rows_in(path) == 50
    with pytest.raises(StoreError, match="closed"):
        await store.append(AuditEvent("x.y", 1.0))


async def test_open_on_unwritable_path_names_the_path(tmp_path: Path) -> None:
    """A path whose parent is a regular file makes open() raise StoreError naming the path."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = blocker / "audit.db"
    with pytest.raises(StoreError, match="directory") as raised:
        await SqliteAuditStore(path).open()
    assert str(path) in str(raised.value)


async def test_open_on_a_directory_names_the_path(tmp_path: Path) -> None:
    """A path that is a directory makes open() raise StoreError naming the path."""
    path = tmp_path / "audit.db"
    path.mkdir()
    with pytest.raises(StoreError, match="cannot open") as raised:
        await SqliteAuditStore(path).open()
    assert str(path) in str(raised.value)


async def test_open_on_corrupt_file_names_the_path(tmp_path: Path) -> None:
    """A file that is not SQLite makes open() raise StoreError naming the path."""
    path = tmp_path / "audit.db"
    path.write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(StoreError, match="not a database") as raised:
        await SqliteAuditStore(path).open()
    assert str(path) in str(raised.value)


async def test_open_refuses_a_newer_schema(tmp_path: Path) -> None:
    """A file written by a newer schema version is refused rather than misread."""
    path = tmp_path / "audit.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="newer") as raised:
        await SqliteAuditStore(path).open()
    assert str(path) in str(raised.value)


@pytest.mark.parametrize("kwargs", [{"retention_days": 0}, {"max_rows": 0}, {"prune_every": 0}])
def test_constructor_rejects_non_positive_bounds(tmp_path: Path, kwargs: dict[str, float]) -> None:
    """Zero or negative retention, max_rows or prune_every is a ValueError."""
    with pytest.raises(ValueError, match="positive"):
        SqliteAuditStore(tmp_path / "audit.db", **kwargs)  # type: ignore[arg-type]
