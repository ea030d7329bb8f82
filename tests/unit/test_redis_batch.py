"""AutoPipeline: calls made in one turn of the event loop share one send."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from appliance.limits.redis_batch import AutoPipeline, Call


class Sender:
    """Records each send; answers each call with its first key, or fails as told."""

    def __init__(self) -> None:
        self.sends: list[list[Call]] = []
        self.fail: Exception | None = None
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, calls: list[Call]) -> list[Any]:
        self.sends.append(calls)
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [ValueError(keys[0]) if keys[0] == "bad" else keys[0] for keys, _ in calls]


def call(key: str) -> Call:
    return [key], ["admit", "fields"]


async def test_calls_of_one_turn_share_one_send() -> None:
    """Twenty calls made before the loop turns travel in one send; each gets its reply."""
    sender = Sender()
    pipeline = AutoPipeline(sender)
    replies = await asyncio.gather(*(pipeline.call(call(f"k{n}")) for n in range(20)))
    assert replies == [f"k{n}" for n in range(20)]
    assert [len(calls) for calls in sender.sends] == [20]


async def test_calls_while_a_send_is_in_flight_go_in_the_next_one() -> None:
    """A call made while a send waits for Redis is not held back by it: it goes out at once
    in a send of its own."""
    sender = Sender()
    sender.gate.clear()
    pipeline = AutoPipeline(sender)
    first = pipeline.call(call("a"))
    await asyncio.sleep(0)
    second = pipeline.call(call("b"))
    for _ in range(10):  # the second send starts within a few turns, the first still waiting
        if len(sender.sends) == 2:
            break
        await asyncio.sleep(0)
    assert [len(calls) for calls in sender.sends] == [1, 1]
    sender.gate.set()
    assert [await first, await second] == ["a", "b"]


async def test_one_calls_error_reply_fails_that_call_only() -> None:
    """An error reply for one call is raised to its caller; the others get their replies."""
    pipeline = AutoPipeline(Sender())
    results: tuple[Any, ...] = await asyncio.gather(
        pipeline.call(call("bad")), pipeline.call(call("good")), return_exceptions=True
    )
    bad, good = results
    assert isinstance(bad, ValueError)
    assert good == "good"


async def test_a_failed_send_fails_every_caller_with_its_own_copy() -> None:
    """When the send itself fails (Redis down), every caller raises that error."""
    sender = Sender()
    sender.fail = ConnectionError("redis admit failed")
    pipeline = AutoPipeline(sender)
    errors = await asyncio.gather(
        pipeline.call(call("a")), pipeline.call(call("b")), return_exceptions=True
    )
    assert [type(e) for e in errors] == [ConnectionError, ConnectionError]
    assert errors[0] is not errors[1]


async def test_a_caller_that_gives_up_does_not_disturb_the_others() -> None:
    """A cancelled caller is skipped when the replies arrive."""
    sender = Sender()
    sender.gate.clear()
    pipeline = AutoPipeline(sender)
    gone, stays = pipeline.call(call("a")), pipeline.call(call("b"))
    await asyncio.sleep(0)
    gone.cancel()
    sender.gate.set()
    assert await stays == "b"
    with pytest.raises(asyncio.CancelledError):
        await gone


class Moving(Sender):
    """Answers "again" (a slot being moved) for key "m" the first `times` sends."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times

    async def __call__(self, calls: list[Call]) -> list[Any]:
        self.sends.append(calls)
        replies: list[Any] = []
        for keys, _ in calls:
            if keys[0] == "m" and self.times > 0:
                self.times -= 1
                replies.append(TimeoutError("again"))
            else:
                replies.append(keys[0])
        return replies


def again(reply: BaseException) -> bool:
    return str(reply) == "again"


async def test_a_call_answered_again_is_resent_alone_within_its_deadline() -> None:
    """A call whose reply says "again" goes out once more in a later send, without holding
    back the others of its batch, and gets its answer."""
    sender = Moving(times=2)
    pipeline = AutoPipeline(sender, again=again, deadline_s=1.0)
    moving, other = pipeline.call(call("m")), pipeline.call(call("o"))
    assert await other == "o"
    assert not moving.done()
    assert await moving == "m"
    assert [[keys[0] for keys, _ in calls] for calls in sender.sends] == [["m", "o"], ["m"], ["m"]]


async def test_again_past_the_deadline_raises_the_reply() -> None:
    """Once resending would go past the call's deadline, its caller gets the reply."""
    sender = Moving(times=1000)
    pipeline = AutoPipeline(sender, again=again, deadline_s=0.05)
    with pytest.raises(TimeoutError, match="again"):
        await pipeline.call(call("m"))
    assert 2 <= len(sender.sends) <= 4  # one pause (20 ms) after another, up to 50 ms
