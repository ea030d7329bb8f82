"""Calls made in the same turn of the event loop share one Redis pipeline (auto-pipelining).

Each request still waits for exactly one round trip, but under load the admissions of many
requests travel in one write and come back in one read, sparing the per-command work of the
client (a connection checkout, packing, a send and a receive system call each) that costs
far more than the script itself. A lone call is sent on the next turn of the loop: no wait.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from typing import Any

Call = tuple[list[str], list[Any]]  # the KEYS and ARGV of one EVALSHA
# Sends calls in one round trip; replies in order, a failed call's as an exception object.
Send = Callable[[list[Call]], Awaitable[list[Any]]]


_Pending = tuple[Call, "asyncio.Future[Any]", float]  # the call, its reply, its deadline
AGAIN_AFTER_S = 0.02  # pause before a call whose reply said "again" is sent once more


class AutoPipeline:
    """`again(reply)`: an error reply worth sending the call once more for, after a short
    pause, as long as that stays within `deadline_s` of the first send; the call goes with a
    later batch, so the others of its batch are answered without waiting for it."""

    def __init__(
        self,
        send: Send,
        *,
        again: Callable[[BaseException], bool] = lambda _reply: False,
        deadline_s: float = 0.0,
    ) -> None:
        self._send = send
        self._again = again
        self._deadline_s = deadline_s
        self._pending: list[_Pending] = []
        self._flushes: set[asyncio.Task[None]] = set()

    def call(self, call: Call) -> asyncio.Future[Any]:
        """The reply of `call`, sent with every other call made before the loop turns."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue(call, future, loop.time() + self._deadline_s)
        return future

    def _queue(self, call: Call, future: asyncio.Future[Any], deadline: float) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append((call, future, deadline))

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.create_task(self._run(batch), name="limits-pipeline")
        self._flushes.add(task)  # a reference until it is done
        task.add_done_callback(self._flushes.discard)

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            replies = await self._send([call for call, _, _ in batch])
        except asyncio.CancelledError:
            for _, future, _ in batch:
                future.cancel()  # nobody waits forever for a flush that was stopped
            raise
        except Exception as exc:  # every caller raises it (a copy each: one traceback each)
            replies = [copy.copy(exc) for _ in batch]
        loop = asyncio.get_running_loop()
        for (call, future, deadline), reply in zip(batch, replies, strict=True):
            if future.done():  # the caller gave up (cancelled)
                continue
            if isinstance(reply, BaseException):
                if self._again(reply) and loop.time() + AGAIN_AFTER_S < deadline:
                    loop.call_later(AGAIN_AFTER_S, self._queue, call, future, deadline)
                    continue
                future.set_exception(reply)
            else:
                future.set_result(reply)
