"""The backend clients on the wire, against a raw TCP server that scripts each answer.

Behaviour both clients owe the forwarder (framing, timeouts, errors) runs on both; the
built-in client's own rules (pooling, its bounds, flow control) on it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from appliance.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamStreamBroken,
    UpstreamStreamIdleTimeout,
    UpstreamTimeout,
)
from appliance.settings import Backend
from appliance.settings.loader import BackendCredentials
from appliance.upstream.aiohttp_client import AiohttpBackendClient
from appliance.upstream.h1 import pool as pool_module
from appliance.upstream.h1.client import H1BackendClient
from appliance.upstream.ports import BackendClient

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
CLIENTS = {"routerctl": H1BackendClient, "aiohttp": AiohttpBackendClient}
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


@dataclass
class Wire:
    """A scripted backend: each connection is served by `handler`; what arrived is kept."""

    port: int
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


@contextlib.asynccontextmanager
async def wire(handler: Handler) -> AsyncIterator[Wire]:
    state = Wire(port=0)
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        state.writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        with contextlib.suppress(Exception):
            await handler(reader, writer)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        for writer in state.writers:
            writer.transport.abort()
        server.close()
        for task in tasks:
            task.cancel()
        await server.wait_closed()


def answering(*answers: bytes, keep: bool = True) -> Callable[[Wire], Handler]:
    """A handler answering each request on a connection with the next answer, in turn."""

    def make(state: Wire) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for answer in answers:
                state.requests.append(await read_request(reader))
                writer.write(answer)
                await writer.drain()
            if keep:
                await reader.read()  # until the client closes

        return handler

    return make


@contextlib.asynccontextmanager
async def client_for(kind: str, port: int, **timeouts: float) -> AsyncIterator[BackendClient]:
    backend = Backend(id="b", url=f"http://127.0.0.1:{port}/v1", **timeouts)  # type: ignore[arg-type]
    client: BackendClient = CLIENTS[kind]((backend,), {"b": BackendCredentials(headers={})})
    await client.open()
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def scripted(
    script: Callable[[Wire], Handler], kind: str = "routerctl", **timeouts: float
) -> AsyncIterator[tuple[Wire, BackendClient]]:
    holder: list[Wire] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await script(holder[0])(reader, writer)

    async with wire(handler) as state:
        holder.append(state)
        async with client_for(kind, state.port, **timeouts) as client:
            yield state, client


both = pytest.mark.parametrize("kind", list(CLIENTS))


async def post(client: BackendClient, request_id: str = "r1") -> bytes:
    response = await client.post("b", "chat/completions", b'{"x":1}', request_id)
    return await response.read()


# What both clients owe the forwarder.


@both
async def test_request_and_answer(kind: str) -> None:
    async with scripted(answering(OK), kind) as (state, client):
        response = await client.post("b", "chat/completions", b'{"x":1}', "rid-7")
        assert (response.status, response.content_type) == (200, "application/json")
        assert await response.read() == b"{}"
    head, _, body = state.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"x-request-id: rid-7" in head.lower()
    assert b"accept-encoding: identity" in head.lower()
    assert body == b'{"x":1}'


@both
async def test_chunked_stream_arrives_piece_by_piece_then_ends(kind: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for piece in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await reader.read()

    async with scripted(lambda _: handler, kind) as (_, client):
        response = await client.post("b", "chat/completions", b"{}", "r")
        assert response.is_event_stream
        pieces = []
        while chunk := await response.next_chunk():
            pieces.append(chunk)
    assert b"".join(pieces) == b"data: 1\n\ndata: 2\n\n"
    assert len(pieces) == 2  # delivered as they came, not at the end


@both
async def test_body_without_length_ends_with_the_connection(kind: str) -> None:
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n" + b'{"a":"' + b"x" * 5000
    async with scripted(answering(answer + b'"}', keep=False), kind) as (_, client):
        assert await post(client) == b'{"a":"' + b"x" * 5000 + b'"}'


@both
async def test_informational_answer_is_skipped(kind: str) -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nlink: </a>; rel=preload\r\n\r\n"
    async with scripted(answering(early + OK), kind) as (_, client):
        response = await client.post("b", "chat/completions", b"{}", "r")
        assert response.status == 200
        assert await response.read() == b"{}"


@both
async def test_body_cut_short_is_a_broken_stream(kind: str) -> None:
    cut = b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"partial'
    async with scripted(answering(cut, keep=False), kind) as (_, client):
        response = await client.post("b", "chat/completions", b"{}", "r")
        with pytest.raises(UpstreamStreamBroken):
            await response.read()


@both
async def test_closed_without_answer(kind: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with scripted(lambda _: handler, kind) as (_, client):
        with pytest.raises(UpstreamError):
            await post(client)


@both
async def test_no_head_within_ttfb_timeout(kind: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(30)

    async with scripted(lambda _: handler, kind, ttfb_timeout_s=0.2) as (_, client):
        with pytest.raises(UpstreamTimeout):
            await asyncio.wait_for(post(client), 5)


@both
async def test_body_not_done_within_total_timeout(kind: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{")
        await asyncio.sleep(30)

    async with scripted(lambda _: handler, kind, total_timeout_s=0.3) as (_, client):
        response = await client.post("b", "chat/completions", b"{}", "r")
        with pytest.raises(UpstreamTimeout):
            await asyncio.wait_for(response.read(), 5)


@both
async def test_silent_stream_hits_the_idle_timeout(kind: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
        writer.write(b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await asyncio.sleep(30)

    async with scripted(lambda _: handler, kind, stream_idle_timeout_s=0.2) as (_, client):
        response = await client.post("b", "chat/completions", b"{}", "r")
        assert await response.next_chunk() == b"hello"
        with pytest.raises(UpstreamStreamIdleTimeout):
            await asyncio.wait_for(response.next_chunk(), 5)
        response.close()  # as the forwarder's deferred close does


@both
async def test_nothing_listening_is_a_connect_error(kind: str) -> None:
    with socket.socket() as bound:  # bound, never listening: refused, and no one else's port
        bound.bind(("127.0.0.1", 0))
        async with client_for(kind, bound.getsockname()[1]) as client:
            with pytest.raises(UpstreamConnectError):
                await post(client)


@both
async def test_probe(kind: str) -> None:
    sick = b"HTTP/1.1 503 Unavailable\r\ncontent-length: 0\r\n\r\n"
    async with scripted(answering(OK, sick), kind) as (state, client):
        assert await client.probe("b", 2.0) is True
        assert await client.probe("b", 2.0) is False
    assert state.requests[0].startswith(b"GET /health HTTP/1.1\r\n")


# The built-in client's own rules.


async def test_connections_are_kept_alive_and_reused() -> None:
    async with scripted(answering(OK, OK, OK)) as (state, client):
        for i in range(3):
            assert await post(client, f"r{i}") == b"{}"
    assert state.connections == 1


async def test_connection_close_answer_is_not_reused() -> None:
    closing = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}"
    async with scripted(answering(closing, keep=False)) as (state, client):
        assert await post(client) == b"{}"
        assert await post(client) == b"{}"
    assert state.connections == 2


async def test_stream_closed_after_its_end_leaves_the_connection_to_the_next() -> None:
    """close() after a stream was read to its end (the forwarder's deferred close) must not
    touch the connection, which may already serve another request."""
    stream = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 3\r\n\r\nabc"
    async with scripted(answering(stream, OK)) as (state, client):
        first = await client.post("b", "chat/completions", b"{}", "r1")
        while await first.next_chunk():
            pass
        second = await client.post("b", "chat/completions", b"{}", "r2")
        first.close()
        assert await second.read() == b"{}"
    assert state.connections == 1


async def test_stream_closed_mid_way_drops_its_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await reader.read()  # returns when the client drops the connection

    async with scripted(lambda _: handler) as (state, client):
        response = await client.post("b", "chat/completions", b"{}", "r1")
        assert await response.next_chunk() == b"abc"
        response.close()
        again = await client.post("b", "chat/completions", b"{}", "r2")
        assert await again.next_chunk() == b"abc"
        again.close()
    assert state.connections == 2


async def test_idle_connection_past_keepalive_is_not_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool_module, "KEEPALIVE_S", 0.05)
    async with scripted(answering(OK)) as (state, client):
        await post(client)
        await asyncio.sleep(0.1)
        await post(client)
    assert state.connections == 2


async def test_connections_per_backend_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "POOL_LIMIT", 2)
    busy = 0
    most = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal busy, most
        while True:
            await read_request(reader)
            busy += 1
            most = max(most, busy)
            await asyncio.sleep(0.05)
            busy -= 1
            writer.write(OK)
            await writer.drain()

    async with scripted(lambda _: handler) as (state, client):
        answers = await asyncio.gather(*(post(client, f"r{i}") for i in range(6)))
    assert answers == [b"{}"] * 6
    assert state.connections == 2
    assert most == 2


async def test_oversized_answer_head_is_refused() -> None:
    big = b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"a" * (70 * 1024) + b"\r\n\r\n"
    async with scripted(answering(big)) as (_, client):
        with pytest.raises(UpstreamError, match="over 64 KiB"):
            await asyncio.wait_for(post(client), 5)


async def test_garbage_answer_is_refused() -> None:
    async with scripted(answering(b"SMTP ready\r\n\r\n")) as (_, client):
        with pytest.raises(UpstreamError, match=r"not valid HTTP/1\.1"):
            await asyncio.wait_for(post(client), 5)


async def test_bytes_nobody_asked_for_end_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK + b"HTTP/1.1 200 OK\r\n")  # a second answer to no request
        await read_request(reader)  # never comes on this connection
        writer.write(OK)

    async with scripted(lambda _: handler) as (state, client):
        await post(client)
        await asyncio.sleep(0.05)
        with contextlib.suppress(UpstreamError):
            await asyncio.wait_for(post(client), 2)
    assert state.connections == 2


async def test_line_break_in_a_header_is_never_sent() -> None:
    async with scripted(answering(OK)) as (state, client):
        with pytest.raises(UpstreamError, match="line break"):
            await post(client, "r1\r\nx-admin: yes")
        with pytest.raises(UpstreamError, match="line break"):
            await client.post("b", "chat/completions", b"{}", "r", {"traceparent": "a\nb"})
    assert state.requests == []


async def test_slow_reader_pauses_the_backend() -> None:
    """A reader that stops taking the body stops the socket: the backend's writes back up
    (past what the kernel buffers) instead of the router buffering the whole answer."""
    size = 64 * 1024 * 1024
    sent = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        piece = b"x" * (1024 * 1024)
        for _ in range(size // len(piece)):
            writer.write(piece)
            await writer.drain()
            sent += len(piece)

    async with scripted(lambda _: handler) as (_, client):
        response = await client.post("b", "chat/completions", b"{}", "r")
        await asyncio.sleep(1.0)  # not reading
        stalled_at = sent
        got = 0
        while chunk := await asyncio.wait_for(response.next_chunk(), 10):
            got += len(chunk)
    assert stalled_at < size // 2
    assert got == size


async def test_reads_after_the_end_never_touch_the_reused_connection() -> None:
    """A stream read to its end gave its connection back; reading it again (the relay does,
    after an event flushed at the end) must not take the next request's bytes."""
    first = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 3\r\n\r\nabc"
    second = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nsecret\r\n0\r\n\r\n"
    async with scripted(answering(first, second)) as (state, client):
        a = await client.post("b", "chat/completions", b"{}", "a")
        assert await a.next_chunk() == b"abc"
        assert await a.next_chunk() == b""
        b = await client.post("b", "chat/completions", b"{}", "b")
        assert await a.next_chunk() == b""
        assert await a.read() == b""
        assert await b.read() == b"secret"
    assert state.connections == 1


@pytest.mark.parametrize("kind", ["routerctl"])
async def test_one_header_line_that_never_ends_is_bounded(kind: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nx-endless: ")
        for _ in range(256):  # 16 MiB at most, never a line end
            writer.write(b"a" * 65536)
            await writer.drain()

    async with scripted(lambda _: handler, kind) as (_, client):
        with pytest.raises(UpstreamError, match="over 64 KiB"):
            await asyncio.wait_for(post(client), 5)


async def test_a_head_in_the_same_packet_as_a_large_body_is_not_refused() -> None:
    body = b"x" * (200 * 1024)
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    async with scripted(answering(answer)) as (_, client):
        assert await post(client) == body


async def test_a_failed_connect_wakes_a_request_waiting_for_a_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool_module, "POOL_LIMIT", 1)
    with socket.socket() as bound:  # refuses every connect
        bound.bind(("127.0.0.1", 0))
        async with client_for("routerctl", bound.getsockname()[1], ttfb_timeout_s=5) as client:
            outcomes = await asyncio.wait_for(
                asyncio.gather(post(client, "a"), post(client, "b"), return_exceptions=True), 2
            )
    assert [type(o) for o in outcomes] == [UpstreamConnectError, UpstreamConnectError]


async def test_a_woken_waiter_that_leaves_passes_its_turn_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool_module, "POOL_LIMIT", 1)
    async with scripted(answering(OK, OK, OK), ttfb_timeout_s=5) as (_, client):
        first = await client.post("b", "chat/completions", b"{}", "r0")  # the only slot
        leaving = asyncio.create_task(post(client, "r1"))
        staying = asyncio.create_task(post(client, "r2"))
        await asyncio.sleep(0.05)
        assert await first.read() == b"{}"  # the connection is back: "leaving" is woken...
        leaving.cancel()  # ...and gone before it runs
        assert await asyncio.wait_for(staying, 2) == b"{}"


async def test_probe_never_sends_a_line_break() -> None:
    async with wire(answering(OK)(state := Wire(0))) as served:
        url = f"http://127.0.0.1:{served.port}/v1"
        sneaky = Backend(id="b", url=url, headers={"x-a": "v\r\nx-evil: 1"})
        encoded = Backend(id="c", url=url, health_path="/h\r\nx-evil: 1")
        creds = {"b": BackendCredentials(headers={}), "c": BackendCredentials(headers={})}
        client = H1BackendClient((sneaky, encoded), creds)
        await client.open()
        try:
            assert await client.probe("b", 1.0) is False  # never sent
            assert await client.probe("c", 1.0) is True  # sent percent-encoded
        finally:
            await client.close()
    assert len(state.requests) == 1
    assert state.requests[0].startswith(b"GET /h%0D%0Ax-evil:%201 HTTP/1.1\r\n")
    assert b"x-evil: 1" not in state.requests[0]


async def test_path_outside_latin_1_is_percent_encoded() -> None:
    async with wire(answering(OK)(state := Wire(0))) as served:
        backend = Backend(id="b", url=f"http://127.0.0.1:{served.port}/v1/модель")
        client = H1BackendClient((backend,), {"b": BackendCredentials(headers={})})
        await client.open()
        try:
            response = await client.post("b", "chat/completions", b"{}", "r")
            assert await response.read() == b"{}"
        finally:
            await client.close()
    assert state.requests[0].startswith(
        b"POST /v1/%D0%BC%D0%BE%D0%B4%D0%B5%D0%BB%D1%8C/chat/completions HTTP/1.1\r\n"
    )


async def test_closing_the_client_cuts_a_body_that_ends_at_eof() -> None:
    """An EOF-delimited body is complete only when the backend closes, not when we do."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{"partial":')
        await reader.read()

    async with scripted(lambda _: handler) as (_, client):
        response = await client.post("b", "chat/completions", b"{}", "r")
        reading = asyncio.create_task(response.read())
        await asyncio.sleep(0.05)
        await client.close()
        with pytest.raises(UpstreamStreamBroken):
            await asyncio.wait_for(reading, 2)


async def test_waiting_for_a_free_connection_uses_up_the_ttfb_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool_module, "POOL_LIMIT", 1)
    async with scripted(answering(OK, OK), ttfb_timeout_s=0.3) as (_, client):
        held = await client.post("b", "chat/completions", b"{}", "r0")  # the only connection
        with pytest.raises(UpstreamTimeout):
            await asyncio.wait_for(post(client, "r1"), 5)
        assert await held.read() == b"{}"
        assert await post(client, "r2") == b"{}"  # the pool still works


@contextlib.asynccontextmanager
async def tls_wire(ca: trustme.CA) -> AsyncIterator[Wire]:
    """The scripted backend behind TLS, its certificate for 127.0.0.1 from `ca`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    state = Wire(port=0)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        with contextlib.suppress(Exception):
            await answering(OK, OK)(state)(reader, writer)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


@both
async def test_https_backend_is_verified_against_the_system_cas(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = trustme.CA()
    async with tls_wire(ca) as state:
        url = f"https://127.0.0.1:{state.port}/v1"
        backend = Backend(id="b", url=url)
        creds = {"b": BackendCredentials(headers={})}
        # Not trusted: the CA is nobody's.
        untrusting = CLIENTS[kind]((backend,), creds)
        await untrusting.open()
        try:
            with pytest.raises(UpstreamConnectError):
                await post(untrusting)
        finally:
            await untrusting.close()
        if kind == "aiohttp":
            return  # aiohttp builds its context at import: SSL_CERT_FILE must be set before
        # Trusted once the system's CA file holds it (SSL_CERT_FILE, read per context).
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        trusting = CLIENTS[kind]((backend,), creds)
        await trusting.open()
        try:
            assert await post(trusting) == b"{}"
        finally:
            await trusting.close()
    assert b"host: 127.0.0.1:" in state.requests[0].lower()
