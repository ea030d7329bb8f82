"""SqliteOverrideStore against real SQLite files."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from appliance.routing.overrides import Override, OverrideKind
from appliance.routing.sqlite_override_store import SqliteOverrideStore
from appliance.sqlite_support import StoreError


def make(id_: str = "ov1", **changes: object) -> Override:
    fields: dict[str, object] = {
        "id": id_,
        "kind": OverrideKind.DEGRADE,
        "backend": "gpu-a",
        "model": None,
        "factor": 0.25,
        "reason": "slow since 14:02",
        "actor": "admin:alice",
        "created_at": 1_700_000_000.125,
        "expires_at": 1_700_003_600.5,
    }
    fields.update(changes)
    return Override(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteOverrideStore]:
    async with SqliteOverrideStore(tmp_path / "state" / "overrides.db") as opened:
        yield opened


@pytest.mark.parametrize(
    "override",
    [
        make(kind=OverrideKind.DEGRADE, factor=0.1, expires_at=None),
        make(kind=OverrideKind.DRAIN, factor=0.0, reason="maintenance ✓ ünïcode"),
        make(kind=OverrideKind.PIN, model="llama-3-70b", factor=1.0, expires_at=1e10 + 0.001),
    ],
    ids=["degrade-no-ttl", "drain-unicode", "pin-with-model"],
)
async def test_put_then_list_round_trips_every_field(
    store: SqliteOverrideStore, override: Override
) -> None:
    """Every field of an override, of each kind, comes back equal, with the enum type kept."""
    await store.put(override)
    [back] = await store.list()
    assert back == override
    assert back.kind is override.kind


async def test_put_replaces_by_id(store: SqliteOverrideStore) -> None:
    """A second put with the same id replaces the first instead of adding a row."""
    await store.put(make("a", factor=0.5))
    await store.put(make("b"))
    await store.put(make("a", factor=0.75, reason="better now"))
    by_id = {o.id: o for o in await store.list()}
    assert set(by_id) == {"a", "b"}
    assert by_id["a"] == make("a", factor=0.75, reason="better now")


async def test_list_is_oldest_first_and_includes_expired(store: SqliteOverrideStore) -> None:
    """list() returns every stored override, expired ones too, ordered by created_at."""
    await store.put(make("new", created_at=30.0, expires_at=None))
    await store.put(make("old", created_at=10.0, expires_at=11.0))
    await store.put(make("mid", created_at=20.0))
    assert [o.id for o in await store.list()] == ["old", "mid", "new"]


async def test_delete_returns_the_removed_override(store: SqliteOverrideStore) -> None:
    """delete() returns what it removed, and the override is gone afterwards."""
    override = make("x", kind=OverrideKind.PIN, model="m", factor=1.0)
    await store.put(override)
    assert await store.delete("x") == override
    assert await store.list() == []


async def test_delete_of_unknown_id_returns_none(store: SqliteOverrideStore) -> None:
    """delete() of an id that is not stored returns None and leaves the others alone."""
    await store.put(make("kept"))
    assert await store.delete("missing") is None
    assert [o.id for o in await store.list()] == ["kept"]


async def test_purge_expired_removes_exactly_the_inactive(store: SqliteOverrideStore) -> None:
    """purge_expired(now) removes overrides with expires_at <= now and returns their count."""
    now = 1000.0
    await store.put(make("past", expires_at=now - 1))
    await store.put(make("boundary", expires_at=now))  # Override.active(now) is False here
    await store.put(make("future", expires_at=now + 0.001))
    await store.put(make("forever", expires_at=None))
    assert await store.purge_expired(now) == 2
    assert {o.id for o in await store.list()} == {"future", "forever"}
    assert await store.purge_expired(now) == 0


async def test_overrides_survive_reopen(tmp_path: Path) -> None:
    """A new store instance on the same file sees what the previous one stored."""
    path = tmp_path / "overrides.db"
    async with SqliteOverrideStore(path) as first:
        await first.put(make("a"))
        await first.put(make("b", kind=OverrideKind.DRAIN, factor=0.0, expires_at=None))
        await first.delete("a")
    async with SqliteOverrideStore(path) as second:
        assert await second.list() == [
            make("b", kind=OverrideKind.DRAIN, factor=0.0, expires_at=None)
        ]


async def test_open_creates_parent_directories(tmp_path: Path) -> None:
    """open() creates missing parent directories of the file."""
    path = tmp_path / "a" / "b" / "c" / "overrides.db"
    async with SqliteOverrideStore(path):
        pass
    assert path.is_file()


async def test_open_on_corrupt_file_names_the_path(tmp_path: Path) -> None:
    """A file that is not SQLite makes open() raise StoreError naming the path."""
    path = tmp_path / "overrides.db"
    path.write_bytes(b"definitely not a database" * 200)
    store = SqliteOverrideStore(path)
    with pytest.raises(StoreError, match="not a database") as raised:
        await store.open()
    assert str(path) in str(raised.value)


async def test_open_on_unwritable_path_names_the_path(tmp_path: Path) -> None:
    """A path whose parent is a regular file makes open() raise StoreError naming the path."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    path = blocker / "overrides.db"
    with pytest.raises(StoreError) as raised:
        await SqliteOverrideStore(path).open()
    assert str(path) in str(raised.value)


async def test_use_before_open_raises_store_error(tmp_path: Path) -> None:
    """Calling a method on a store that is not open raises StoreError, not AttributeError."""
    with pytest.raises(StoreError, match="not open"):
        await SqliteOverrideStore(tmp_path / "o.db").list()


async def test_unknown_kind_in_file_is_refused(tmp_path: Path) -> None:
    """A row with a kind this version does not know raises StoreError naming the path."""
    path = tmp_path / "overrides.db"
    async with SqliteOverrideStore(path) as store:
        await store.put(make("weird"))
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE overrides SET kind = 'teleport'")
    async with SqliteOverrideStore(path) as store:
        with pytest.raises(StoreError, match="teleport") as raised:
            await store.list()
    assert str(path) in str(raised.value)
