"""Admissions on the shared Redis connection, an org's in one script call when they queue.

On an idle connection an admission is written at once, alone: nothing waits for company.
While the connection has replies outstanding, the admissions made in one turn of the loop
for the same org go as one `admits` call instead: the script reads and writes each of the
org's buckets once for all of them rather than once each, which is most of its cost. The
script admits them in turn, each seeing the charges of those before it, so the decisions
are those of separate calls made in that order. Each org has its own call: an error reply
about one org's keys reaches only that org's requests.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from appliance.limits.redis_batch import Call
from appliance.limits.redis_mux import Command, Multiplexed
from appliance.limits.redis_script import BUCKET_SHA

_Queued = tuple[Call, float, "asyncio.Future[Any]"]


class SharedAdmissions:
    def __init__(self, mux: Multiplexed) -> None:
        self._mux = mux
        self._queued: dict[str, list[_Queued]] = {}

    def send(self, org: str, call: Call, deadline: float) -> asyncio.Future[Any] | None:
        """The future of `call`'s reply (an error reply as its exception object); None when
        the connection is not open (the caller opens it with `Multiplexed.execute`)."""
        idle = self._mux.idle()
        if idle is None:
            return None
        if idle and not self._queued:
            return self._mux.send_now(evalsha(call), deadline)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._queued:
            loop.call_soon(self._flush)
        self._queued.setdefault(org, []).append((call, deadline, future))
        return future

    def _flush(self) -> None:
        queued, self._queued = self._queued, {}
        for everyone in queued.values():
            # A caller cancelled meanwhile (its request is gone) is not admitted: nothing of
            # it is charged, and nothing would ever settle it.
            group = [item for item in everyone if not item[2].done()]
            if not group:
                continue
            command = evalsha(group[0][0]) if len(group) == 1 else _admits(group)
            reply = self._mux.send_now(command, min(deadline for _, deadline, _ in group))
            if reply is None:  # the connection dropped since: its callers fail as on it
                _deliver(group, None)
            else:
                reply.add_done_callback(partial(_deliver, group))


def evalsha(call: Call) -> Command:
    keys, args = call
    return ("EVALSHA", BUCKET_SHA, len(keys), *keys, *args)


def _admits(group: list[_Queued]) -> Command:
    keys: list[str] = []
    fields: list[str] = []
    for (call_keys, args), _, _ in group:
        keys += call_keys
        fields.append(args[1])  # args = ("admit", fields)
    return evalsha((keys, ["admits", *fields]))


def _deliver(group: list[_Queued], reply: asyncio.Future[Any] | None) -> None:
    """Hand each queued caller its share of the call's reply, or the call's failure."""
    waiting = [(n, future) for n, (_, _, future) in enumerate(group) if not future.done()]
    if reply is None:
        failure: BaseException | None = RedisConnectionError("connection to Redis lost")
    elif reply.cancelled():
        for _, future in waiting:
            future.cancel()
        return
    else:
        failure = reply.exception()
    if failure is not None:
        for _, future in waiting:
            future.set_exception(failure)
        return
    assert reply is not None  # narrowed above: only a reply can have no failure
    result = reply.result()
    # An error reply is for the whole call: every caller gets it (NOSCRIPT too).
    whole = len(group) == 1 or isinstance(result, Exception)
    for n, future in waiting:  # a caller cancelled meanwhile is not among them
        future.set_result(result if whole else result[n])


__all__ = ["SharedAdmissions", "evalsha"]
