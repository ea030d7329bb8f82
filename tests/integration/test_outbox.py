"""SqliteOutbox against real SQLite files, real child processes and SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from appliance.sqlite_support import StoreError
from appliance.usage import sqlite_outbox
from appliance.usage.ports import OutboxFull
from appliance.usage.sqlite_outbox import SqliteOutbox

REPO = Path(__file__).resolve().parents[2]
BIG = 1 << 30

# A writer process: appends `count` usage records from 16 concurrent tasks, prints each id
# once its append returned, then sleeps (to be SIGKILLed) or exits.
CHILD = """
import asyncio, sys
from pathlib import Path
from appliance.usage.sqlite_outbox import SqliteOutbox

path, prefix, count, then = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

async def main():
    async with SqliteOutbox(Path(path), 1 << 30, "reject") as outbox:
        ids = iter(range(count))
        async def writer():
            for n in ids:
                rid = f"{prefix}-{n}"
                await outbox.append("usage", "acme", rid, b'{"id":"%s"}' % rid.encode())
                sys.stdout.write(rid + "\\n")
                sys.stdout.flush()
        await asyncio.gather(*(writer() for _ in range(16)))
        if then == "sleep":
            await asyncio.sleep(3600)

asyncio.run(main())
"""


def spawn(path: Path, prefix: str, count: int, then: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), prefix, str(count), then],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def ids_in(path: Path, table: str = "outbox") -> list[str]:
    """Record ids in seq (or insertion) order, read by a separate plain connection."""
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(f"SELECT record_id FROM {table} ORDER BY rowid").fetchall()  # noqa: S608
    return [row[0] for row in rows]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.db"


@pytest.fixture
async def outbox(path: Path) -> AsyncIterator[SqliteOutbox]:
    async with SqliteOutbox(path, BIG, "reject") as opened:
        yield opened


@pytest.fixture
def killed() -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes to SIGKILL if a test leaves them running."""
    children: list[subprocess.Popen[str]] = []
    yield children
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


async def test_append_peek_delete_stats_round_trip(path: Path) -> None:
    """Items come back whole and in order, stats follow appends and deletes, seqs never reuse."""
    times = iter([10.0, 20.0, 30.0, 40.0])
    async with SqliteOutbox(path, BIG, "reject", clock=lambda: next(times)) as outbox:
        await outbox.append("usage", "acme", "r1", b'{"a":1}')
        await outbox.append("audit", "globex", "e1", b"\x00\xff")
        await outbox.append("usage", "acme", "r2", b"{}")
        items = await outbox.peek(10)
        assert [(i.topic, i.key, i.record_id, i.payload, i.created_at) for i in items] == [
            ("usage", "acme", "r1", b'{"a":1}', 10.0),
            ("audit", "globex", "e1", b"\x00\xff", 20.0),
            ("usage", "acme", "r2", b"{}", 30.0),
        ]
        assert [i.seq for i in await outbox.peek(1, after_seq=items[0].seq)] == [items[1].seq]
        stats = await outbox.stats()
        assert (stats.records, stats.bytes, stats.oldest_created_at) == (3, 11, 10.0)
        await outbox.delete([items[0].seq, items[2].seq, 999])
        stats = await outbox.stats()
        assert (stats.records, stats.bytes, stats.oldest_created_at) == (1, 2, 20.0)
        await outbox.delete([items[1].seq])
        assert (await outbox.stats()).oldest_created_at is None
    async with SqliteOutbox(path, BIG, "reject", clock=lambda: 50.0) as reopened:
        await reopened.append("usage", "acme", "r3", b"{}")
        [item] = await reopened.peek(10)
        assert item.seq > items[2].seq


async def test_append_is_committed_before_it_returns(outbox: SqliteOutbox, path: Path) -> None:
    """Another connection sees each record as soon as its append returned."""
    for n in range(5):
        await outbox.append("usage", "acme", f"r{n}", b"{}")
        assert ids_in(path)[-1] == f"r{n}"


async def test_concurrent_appends_share_few_transactions(outbox: SqliteOutbox, path: Path) -> None:
    """200 concurrent appends commit in a handful of transactions, all visible, in call order."""
    ids = [f"r{n}" for n in range(200)]
    await asyncio.gather(*(outbox.append("usage", "acme", rid, b"{}") for rid in ids))
    assert outbox.commits <= 3
    assert outbox.appended == 200
    items = await outbox.peek(1000)
    assert [i.record_id for i in items] == ids
    assert [i.seq for i in items] == sorted(i.seq for i in items)
    assert ids_in(path) == ids


async def test_a_cancelled_append_still_stores_its_record(outbox: SqliteOutbox, path: Path) -> None:
    """Cancelling an append (a client that went away) neither loses its record nor others'."""
    tasks = [asyncio.create_task(outbox.append("usage", "acme", f"r{n}", b"{}")) for n in range(3)]
    await asyncio.sleep(0)
    tasks[1].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], asyncio.CancelledError)
    await outbox.append("usage", "acme", "after", b"{}")
    assert ids_in(path) == ["r0", "r1", "r2", "after"]


async def test_records_survive_sigkill_of_the_writer(
    path: Path, killed: list[subprocess.Popen[str]]
) -> None:
    """Every id a writer reported as appended is in the file after the writer is SIGKILLed."""
    printed: list[str] = []
    # Three kills at different points: a lost record shows up in at least one of them.
    for prefix, k in (("a", 500), ("b", 300), ("c", 700)):
        child = spawn(path, prefix, 100_000, "sleep")
        killed.append(child)
        assert child.stdout is not None
        printed += [child.stdout.readline().strip() for _ in range(k)]
        child.send_signal(signal.SIGKILL)
        child.wait()
        printed += child.stdout.read().split()  # lines already in the pipe when it died
    assert all(printed)
    async with SqliteOutbox(path, BIG, "reject") as reopened:
        stored = [i.record_id for i in await reopened.peek(1_000_000)]
        assert set(printed) <= set(stored)
        assert len(stored) == len(set(stored))
        assert all(await asyncio.gather(*(reopened.lookup(rid, "acme") for rid in printed)))


async def test_reject_mode_refuses_at_the_bound_and_keeps_everything(path: Path) -> None:
    """At the bound, appends raise OutboxFull and nothing is dropped; deleting makes room."""
    drops: list[int] = []
    async with SqliteOutbox(path, 1000, "reject", on_drop=drops.append) as outbox:
        results = await asyncio.gather(
            *(outbox.append("usage", "acme", f"r{n}", b"x" * 100) for n in range(15)),
            return_exceptions=True,
        )
        assert results[:10] == [None] * 10
        assert all(isinstance(r, OutboxFull) for r in results[10:])
        assert str(path) in str(results[10])
        with pytest.raises(OutboxFull):
            await outbox.append("usage", "acme", "late", b"x")
        assert ((await outbox.stats()).records, outbox.size_bytes) == (10, 1000)
        assert ids_in(path) == [f"r{n}" for n in range(10)]
        assert (
            await outbox.lookup("r12", "acme") is None
        )  # a refused record is not looked up either
        [first] = await outbox.peek(1)
        await outbox.delete([first.seq])
        await outbox.append("usage", "acme", "after", b"x" * 100)
    assert drops == []


async def test_drop_oldest_mode_makes_room_and_counts(path: Path) -> None:
    """At the bound, the oldest records go in the same transaction and on_drop hears how many."""
    drops: list[int] = []
    async with SqliteOutbox(path, 1000, "drop_oldest", on_drop=drops.append) as outbox:
        for n in range(12):
            await outbox.append("usage", "acme", f"r{n}", b"x" * 100)
        await outbox.append("usage", "acme", "wide", b"x" * 250)
        with pytest.raises(OutboxFull):  # larger than the whole bound: no amount of dropping helps
            await outbox.append("usage", "acme", "huge", b"x" * 1001)
        assert sum(drops) == 5
        assert ids_in(path) == [*(f"r{n}" for n in range(5, 12)), "wide"]
        assert (await outbox.stats()).bytes == outbox.size_bytes == 950
        assert await outbox.lookup("r0", "acme") is not None  # dropped from the outbox, not the log


async def test_the_bound_is_shared_by_every_instance_on_the_file(path: Path) -> None:
    """Deletes by one instance (a publisher elsewhere) make room for another's appends."""
    async with (
        SqliteOutbox(path, 500, "reject") as writer,
        SqliteOutbox(path, 500, "reject") as publisher,
    ):
        for n in range(5):
            await writer.append("usage", "acme", f"r{n}", b"x" * 100)
        with pytest.raises(OutboxFull):
            await publisher.append("usage", "acme", "no-room", b"x")
        await publisher.delete([i.seq for i in await publisher.peek(10)])
        await writer.append("usage", "acme", "room", b"x" * 500)
        assert ids_in(path) == ["room"]


async def test_two_instances_in_one_process_lose_nothing(path: Path) -> None:
    """Two instances (two connections, two threads) appending at once store every record."""
    async with SqliteOutbox(path, BIG, "reject") as a, SqliteOutbox(path, BIG, "reject") as b:
        await asyncio.gather(
            *(a.append("usage", "acme", f"a{n}", b"{}") for n in range(300)),
            *(b.append("usage", "acme", f"b{n}", b"{}") for n in range(300)),
        )
    assert sorted(ids_in(path)) == sorted(
        [*(f"a{n}" for n in range(300)), *(f"b{n}" for n in range(300))]
    )


async def test_two_processes_appending_to_one_file_lose_nothing(
    path: Path, killed: list[subprocess.Popen[str]]
) -> None:
    """Two router processes sharing the file both get every record in, each exactly once."""
    children = [spawn(path, prefix, 1500, "exit") for prefix in ("p", "q")]
    killed.extend(children)
    printed: list[str] = []
    for child in children:
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        printed += out.split()
    assert len(printed) == 3000
    assert sorted(ids_in(path)) == sorted(printed)
    assert sorted(ids_in(path, "usage_log")) == sorted(printed)


async def test_lookup_outlives_publishing(outbox: SqliteOutbox) -> None:
    """A usage record is found by record or request id, within its org only, after publishing."""
    await outbox.append("usage", "acme", "r1", b'{"id":"r1","request_id":"client-7"}')
    await outbox.append("usage", "", "r2", b'{"id":"r2","request_id":"r2"}')
    await outbox.append("usage", "acme", "r3", b"not json")  # stored all the same
    await outbox.append("audit", "acme", "e1", b"{}")
    await outbox.delete([i.seq for i in await outbox.peek(10)])
    record = b'{"id":"r1","request_id":"client-7"}'
    assert await outbox.lookup("r1", "acme") == record
    assert await outbox.lookup("client-7", "acme") == record
    assert await outbox.lookup("client-7", "globex") is None  # another org's id: unknown
    assert await outbox.lookup("r2", "") is None  # no org: not anyone's
    assert await outbox.lookup("r3", "acme") == b"not json"
    assert await outbox.lookup("e1", "acme") is None  # only usage records are looked up
    assert await outbox.lookup("nope", "acme") is None


async def test_prune_log_removes_only_expired_entries_in_chunks(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prune_log deletes entries older than the retention, over several chunks, and no others."""
    monkeypatch.setattr(sqlite_outbox, "_PRUNE_CHUNK", 3)
    now = [100.0]
    async with SqliteOutbox(path, BIG, "reject", clock=lambda: now[0]) as outbox:
        for n in range(10):
            now[0] = 100.0 + n
            await outbox.append("usage", "acme", f"r{n}", b"{}")
        assert await outbox.prune_log(now=110.0, retention_s=3.5) == 7  # created before 106.5
        assert ids_in(path, "usage_log") == ["r7", "r8", "r9"]
        assert len(await outbox.peek(100)) == 10  # the outbox itself is not pruned
        assert await outbox.prune_log(now=110.0, retention_s=3.5) == 0


async def test_close_finishes_appends_in_flight(path: Path) -> None:
    """Appends already accepted when close() starts are committed; later ones are refused."""
    outbox = SqliteOutbox(path, BIG, "reject", batch_window_s=0.05)
    await outbox.open()
    pending = [
        asyncio.create_task(outbox.append("usage", "acme", f"r{n}", b"{}")) for n in range(5)
    ]
    await asyncio.sleep(0)
    await outbox.close()
    await asyncio.gather(*pending)
    assert ids_in(path) == [f"r{n}" for n in range(5)]
    with pytest.raises(StoreError, match="closed"):
        await outbox.append("usage", "acme", "late", b"{}")


@pytest.fixture
def corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"definitely not sqlite " * 200)
    return path


async def test_a_corrupt_file_is_reported_with_its_path(corrupt: Path) -> None:
    """Opening a file that is not a SQLite database fails with an error naming the file."""
    path = corrupt
    with pytest.raises(StoreError, match=str(path)):
        await SqliteOutbox(path, BIG, "reject").open()
