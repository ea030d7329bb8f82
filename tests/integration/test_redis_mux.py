"""The shared Redis connection of a standalone limit store (redis_mux), on a real valkey."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from appliance.limits.redis_mux import Multiplexed, pack
from tests.services import RedisServer


@pytest.fixture
async def mux(redis_server: RedisServer) -> AsyncIterator[Multiplexed]:
    client = aioredis.Redis.from_url(redis_server.url)
    shared = Multiplexed(client.connection_pool)
    try:
        yield shared
    finally:
        await shared.aclose()
        await client.aclose()


async def test_concurrent_callers_each_get_their_own_replies(mux: Multiplexed) -> None:
    async def call(i: int) -> list[object]:
        return await mux.execute([("ECHO", f"a{i}"), ("ECHO", f"b{i}")])

    replies = await asyncio.gather(*(call(i) for i in range(300)))
    assert replies == [[f"a{i}".encode(), f"b{i}".encode()] for i in range(300)]


async def test_an_error_reply_is_that_command_s_reply_only(mux: Multiplexed) -> None:
    first, second = await mux.execute([("NOSUCHCOMMAND",), ("ECHO", "fine")])
    assert isinstance(first, ResponseError)
    assert second == b"fine"


async def test_a_killed_connection_fails_its_callers_and_the_next_call_reconnects(
    mux: Multiplexed, redis_server: RedisServer
) -> None:
    assert await mux.execute([("CLIENT", "SETNAME", "mux-under-test")]) == [b"OK"]
    blocked = asyncio.create_task(mux.execute([("BLPOP", "mux-never", "5")]))
    await asyncio.sleep(0.1)
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes") >= 1
    finally:
        await admin.aclose()
    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(blocked, 5)
    assert await mux.execute([("ECHO", "again")]) == [b"again"]


async def test_past_its_deadline_a_call_fails_and_its_late_reply_answers_nobody(
    mux: Multiplexed,
) -> None:
    """A call unanswered at its deadline closes the connection (everyone on it fails): the
    reply still owed on it is dropped with it, not read as the next caller's."""
    loop = asyncio.get_running_loop()
    late = asyncio.create_task(mux.execute([("BLPOP", "mux-late", "0.3")], loop.time() + 0.05))
    behind = asyncio.create_task(mux.execute([("ECHO", "behind")]))
    started = loop.time()
    with pytest.raises(TimeoutError):
        await late
    assert loop.time() - started < 0.25
    with pytest.raises(RedisConnectionError):
        await behind
    assert await mux.execute([("ECHO", "mine")], loop.time() + 2) == [b"mine"]
    await asyncio.sleep(0.4)  # the BLPOP's nil would have arrived by now
    assert await mux.execute([("ECHO", "still mine")]) == [b"still mine"]


async def test_a_cancelled_caller_leaves_the_replies_in_step(mux: Multiplexed) -> None:
    """A caller that stops waiting gives up its reply only: the next caller gets its own."""
    slow = asyncio.create_task(mux.execute([("BLPOP", "mux-cancelled", "0.2")]))
    await asyncio.sleep(0.05)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert await mux.execute([("ECHO", "next")]) == [b"next"]


async def test_a_deadline_also_bounds_opening_the_connection(redis_server: RedisServer) -> None:
    """A frozen server accepts the socket but never answers the handshake."""
    client = aioredis.Redis.from_url(redis_server.url)
    shared = Multiplexed(client.connection_pool)
    redis_server.pause()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await shared.execute([("PING",)], loop.time() + 0.1)
        assert loop.time() - started < 0.5
    finally:
        redis_server.resume()
        await shared.aclose()
        await client.aclose()


async def test_the_handshake_is_redis_py_s_auth_and_database(redis_server: RedisServer) -> None:
    """The connection is opened by redis-py (AUTH as a user, SELECT) before it is shared."""
    admin = aioredis.Redis.from_url(redis_server.url)
    user = f"mux-{uuid.uuid4().hex[:8]}"
    await admin.execute_command("ACL", "SETUSER", user, "on", ">s3cret", "~*", "+@all")
    client = aioredis.Redis.from_url(
        f"redis://{user}:s3cret@{redis_server.host}:{redis_server.port}/3"
    )
    shared = Multiplexed(client.connection_pool)
    try:
        assert await shared.execute([("ACL", "WHOAMI"), ("SET", "mux-db", "three")]) == [
            user.encode(),
            b"OK",
        ]
        db3 = aioredis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/3")
        try:
            assert await db3.get("mux-db") == b"three"
        finally:
            await db3.delete("mux-db")
            await db3.aclose()
    finally:
        await shared.aclose()
        await client.aclose()
        await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()


def test_the_connection_works_on_uvloop(redis_server: RedisServer) -> None:
    """The router serves on uvloop: its transports must let the connection be taken over."""

    async def main() -> list[object]:
        client = aioredis.Redis.from_url(redis_server.url)
        shared = Multiplexed(client.connection_pool)
        try:
            return await asyncio.gather(*(shared.execute([("ECHO", f"u{i}")]) for i in range(50)))
        finally:
            await shared.aclose()
            await client.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == [[f"u{i}".encode()] for i in range(50)]


def test_a_deadline_already_due_on_uvloop(redis_server: RedisServer) -> None:
    """uvloop's handle for a time already due is not a timer: the deadline's bookkeeping
    must not rely on it (a call right after such a one once raised AttributeError)."""

    async def main() -> tuple[BaseException | None, BaseException | None]:
        client = aioredis.Redis.from_url(redis_server.url)
        shared = Multiplexed(client.connection_pool)
        loop = asyncio.get_running_loop()
        try:
            assert await shared.execute([("ECHO", "open")]) == [b"open"]
            due = asyncio.ensure_future(shared.execute([("BLPOP", "mux-due", "0.3")], loop.time()))
            behind = asyncio.ensure_future(shared.execute([("ECHO", "b")], loop.time() + 2))
            await asyncio.wait([due, behind], timeout=2)
            return due.exception(), behind.exception()
        finally:
            await shared.aclose()
            await client.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        due, behind = runner.run(main())
    assert isinstance(due, TimeoutError)
    assert isinstance(behind, RedisConnectionError)


def test_commands_are_packed_as_redis_py_packs_them() -> None:
    commands: list[tuple[object, ...]] = [
        ("EVALSHA", "abc", 3, "rl:{o}:k", "x é", "admit", "1 2 3"),
        ("PING",),
        ("SET", "k", 1.5, b"\x00\xff", -7),
    ]
    reference = aioredis.Redis().connection_pool.make_connection()  # type: ignore[no-untyped-call]
    assert pack(commands) == b"".join(reference.pack_commands(commands))
    with pytest.raises(TypeError):
        pack([("SET", "k", True)])


async def test_every_kind_of_argument_reaches_redis_intact(mux: Multiplexed) -> None:
    value = "x é \x00 " + "y" * 1000
    replies = await mux.execute([("SET", "k", value), ("GET", "k"), ("INCRBYFLOAT", "f", 1.25)])
    assert replies[1] == value.encode()
    assert float(replies[2]) == 1.25
