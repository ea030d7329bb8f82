"""A watch on a key range over the gateway's streamed /v3/watch (one JSON object per line).

A watch does not resume by itself: when its stream breaks it raises EtcdUnavailable, and when
its start revision was compacted WatchCompacted, so the caller re-reads what it needs and
watches again from the revision it has (the only place that knows what it has applied).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Self

import aiohttp

from appliance.configsvc.etcd_errors import (
    EtcdAuthError,
    EtcdError,
    EtcdUnavailable,
    WatchCompacted,
)
from appliance.configsvc.etcd_transport import NO_CREDENTIALS, EtcdTransport
from appliance.configsvc.etcd_types import EventType, WatchBatch, WatchEvent
from appliance.configsvc.etcd_wire import (
    TokenRejected,
    WatchLine,
    WatchReply,
    WireEvent,
    classify_stream,
    decode,
    key_text,
)

# clientv3's WithRequireLeader: etcd ends the stream when its member loses the leader,
# instead of leaving us on a member that silently stops sending events.
_REQUIRE_LEADER = {"Grpc-Metadata-Hasleader": "true"}


class EtcdWatch:
    """Batches of events under a key range from a start revision.

    Use as `async with client.watch_prefix(...) as watch: async for batch in watch:`; leaving
    the block closes the stream. Cancelling a read keeps the stream usable.
    """

    def __init__(
        self,
        transport: EtcdTransport,
        *,
        key: bytes,
        range_end: bytes,
        start_revision: int,
        check_s: float,
        on_close: Callable[[EtcdWatch], None],
    ) -> None:
        self._transport = transport
        self._create_request = {
            "create_request": {
                "key": key,
                "range_end": range_end,
                "start_revision": start_revision,
                "progress_notify": True,
            }
        }
        self._check_s = check_s
        self._on_close: Callable[[EtcdWatch], None] | None = on_close
        self._response: aiohttp.ClientResponse | None = None
        self._endpoint = ""
        self._buffer = bytearray()
        self._done = False

    @property
    def endpoint(self) -> str:
        """The endpoint the stream is open to ("" before start())."""
        return self._endpoint

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> WatchBatch:
        if self._done:
            raise StopAsyncIteration
        await self.start()
        try:
            while True:
                batch = self._batch(await self._next_reply())
                if batch is not None:
                    return batch
        except EtcdError:
            await self.aclose()
            raise

    async def start(self) -> None:
        """Open the stream and wait until etcd confirms the watch; nothing if already open."""
        if self._response is not None or self._done:
            return
        try:
            await self._create()
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close the stream (etcd drops the watch with it); iteration then stops."""
        self._done = True
        response, self._response = self._response, None
        if response is not None:
            response.close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(self)

    async def _create(self) -> None:
        token = await self._transport.token()
        refusal = await self._create_once(token)
        if refusal is not None and self._transport.has_credentials:
            token = await self._transport.refresh_token(token)
            refusal = await self._create_once(token)
        if refusal is not None:
            raise refusal

    async def _create_once(self, token: str | None) -> EtcdAuthError | None:
        """Open a stream and read etcd's answer to the create request: None when the watch
        runs, the refusal when a fresh token may cure it; raises any other failure."""
        try:
            self._endpoint, self._response = await self._transport.open_stream(
                "/v3/watch", self._create_request, token, _REQUIRE_LEADER
            )
        except TokenRejected as exc:
            return EtcdAuthError(f"{exc}{'' if token else NO_CREDENTIALS}")
        self._buffer.clear()
        reply = await self._next_reply()
        if reply.created and not reply.canceled:
            return None
        response, self._response = self._response, None
        response.close()
        error = self._cancel_error(reply)
        # A token that expired while we were idle reads as "permission denied" here.
        if isinstance(error, EtcdAuthError):
            return EtcdAuthError(f"{error}{'' if token else NO_CREDENTIALS}")
        raise error

    def _batch(self, reply: WatchReply) -> WatchBatch | None:
        if reply.canceled or reply.compact_revision:
            raise self._cancel_error(reply)
        if reply.created:
            return None
        events = tuple(_event(wire) for wire in reply.events)
        # The header revision of an event batch may run ahead of what this watcher has been
        # sent (etcd catches up in chunks), so only a progress notification may use it.
        revision = events[-1].mod_revision if events else reply.header.revision
        return WatchBatch(revision=revision, events=events)

    def _cancel_error(self, reply: WatchReply) -> EtcdError:
        if reply.compact_revision:
            return WatchCompacted(reply.compact_revision)
        text = f"{self._endpoint}: etcd canceled the watch: {reply.cancel_reason or 'no reason'}"
        if _denied(reply):
            return EtcdAuthError(text)
        return EtcdUnavailable(text)

    async def _next_reply(self) -> WatchReply:
        line = decode(await self._next_line(), WatchLine, self._endpoint)
        if line.error is not None:
            problem = classify_stream(self._endpoint, line.error)
            if isinstance(problem, EtcdError):
                raise problem
            if isinstance(problem, TokenRejected):
                raise EtcdAuthError(str(problem))
            raise EtcdUnavailable(f"the watch stream ended with {problem}")
        if line.result is None:
            raise EtcdError(f"{self._endpoint} sent a watch line with no result")
        return line.result

    async def _next_line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                if line.strip():
                    return line
                continue
            self._buffer += await self._read_chunk()

    async def _read_chunk(self) -> bytes:
        response = self._response
        if response is None:
            raise EtcdUnavailable("the watch stream is closed")
        while True:
            try:
                async with asyncio.timeout(self._check_s):
                    chunk = await response.content.readany()
            except TimeoutError:
                await self._check_member()
                continue
            except (aiohttp.ClientError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
                raise EtcdUnavailable(
                    f"{self._endpoint}: the watch stream broke: {reason}"
                ) from None
            if not chunk:
                raise EtcdUnavailable(f"{self._endpoint}: the watch stream ended")
            return chunk

    async def _check_member(self) -> None:
        """A quiet stream may hang on a frozen or cut-off member: ask that member directly."""
        try:
            status = await self._transport.status_of(self._endpoint)
        except EtcdUnavailable as exc:
            raise EtcdUnavailable(f"the watch stream went quiet and {exc}") from None
        if status.leader == 0:
            raise EtcdUnavailable(f"{self._endpoint}: the member has no leader")


def _denied(reply: WatchReply) -> bool:
    return "permission denied" in reply.cancel_reason


def _event(wire: WireEvent) -> WatchEvent:
    kind = EventType.DELETE if wire.type == "DELETE" else EventType.PUT
    return WatchEvent(type=kind, key=key_text(wire.kv.key), value=wire.kv.value,
                      mod_revision=wire.kv.mod_revision)  # fmt: skip
