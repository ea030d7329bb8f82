"""The shared Redis connection of a standalone limit store (redis_mux), on a real valkey."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
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


async def test_after_a_reset_a_late_reply_never_answers_the_next_caller(
    mux: Multiplexed,
) -> None:
    """A caller that gave up (its deadline) resets the connection: the reply still owed on
    it is dropped with it, not read as the next caller's."""
    late = asyncio.create_task(mux.execute([("BLPOP", "mux-late", "0.3")]))
    await asyncio.sleep(0.05)
    mux.reset()
    with pytest.raises(RedisConnectionError):
        await late
    assert await mux.execute([("ECHO", "mine")]) == [b"mine"]
    await asyncio.sleep(0.4)  # the BLPOP's nil would have arrived by now
    assert await mux.execute([("ECHO", "still mine")]) == [b"still mine"]


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
