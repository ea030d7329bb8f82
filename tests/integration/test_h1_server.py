"""routerctl's own HTTP/1.1 server (server/h1) on the wire, serving small ASGI apps.

The router's own answers on it are in test_http_edges.py (both engines); these are the
server's framing, keep-alive, flow and drain rules, each checked on a raw socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest

from appliance.server.h1 import H1Limits, h1_serve
from appliance.server.h1.protocol import MAX_PIPELINED
from appliance.server.sockets import bind_listener
from appliance.server.startup_error import StartupError

LIMITS = H1Limits(
    max_header_bytes=4096, header_timeout_s=0.5, keep_alive_timeout_s=30, keep_alive_max_requests=3
)
WIRE_TIMEOUT_S = 10.0
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def lifespan_too(app: App) -> App:
    """`app`, which serves HTTP, with the lifespan part every server runs first."""

    async def both(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        else:
            await app(scope, receive, send)

    return both


@lifespan_too
async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with what it saw: method, path, query, headers and the body's length."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    seen = {
        "method": scope["method"],
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode(),
        "query": scope["query_string"].decode(),
        "version": scope["http_version"],
        "headers": [[n.decode(), v.decode()] for n, v in scope["headers"]],
        "body": size,
    }
    body = msgspec.json.encode(seen)
    if scope["path"] == "/chunked":  # no content-length: the server frames it
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (body[:10], body[10:]):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


@contextlib.asynccontextmanager
async def serving(
    app: Callable[[Scope, Receive, Send], Awaitable[None]] = echo,
    limits: H1Limits = LIMITS,
    graceful_s: float = 5.0,
) -> AsyncIterator[tuple[int, asyncio.Event, asyncio.Task[None]]]:
    sock = bind_listener("127.0.0.1:0")
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    task = asyncio.create_task(
        h1_serve(app, [sock], limits, graceful_s=graceful_s, shutdown_trigger=stop.wait)
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            await asyncio.sleep(0.02)
        yield port, stop, task
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        sock.close()


async def exchange(port: int, data: bytes) -> bytes:
    """Send `data`, read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), WIRE_TIMEOUT_S)
    finally:
        writer.close()


def statuses(raw: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def json_bodies(raw: bytes) -> list[dict[str, Any]]:
    return [msgspec.json.decode(m) for m in re.findall(rb"\{\"method\".*?\"body\":\d+\}", raw)]


async def test_keep_alive_serves_requests_until_the_per_connection_maximum() -> None:
    """Requests on one connection are answered in order; the third (the maximum) says close."""
    get = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    async with serving() as (port, _, _):
        raw = await exchange(port, get * 5)
    assert statuses(raw) == [200, 200, 200]
    heads = raw.split(b"HTTP/1.1 ")[1:]
    assert [b"connection: close" in head for head in heads] == [False, False, True]


async def test_scope_carries_path_query_and_lowercased_headers_without_upgrade() -> None:
    request = (
        b"POST /v1/a%20b?x=1 HTTP/1.1\r\nHost: x\r\nX-Thing:  v  \r\nUpgrade: h2c\r\n"
        b"Connection: close\r\nContent-Length: 3\r\n\r\nabc"
    )
    async with serving() as (port, _, _):
        (seen,) = json_bodies(await exchange(port, request))
    assert (seen["method"], seen["path"], seen["raw_path"]) == ("POST", "/v1/a b", "/v1/a%20b")
    assert (seen["query"], seen["version"], seen["body"]) == ("x=1", "1.1", 3)
    assert ["x-thing", "v"] in seen["headers"]
    assert "upgrade" not in {name for name, _ in seen["headers"]}


async def test_a_websocket_upgrade_with_a_body_is_served_as_http1() -> None:
    """llhttp ends an upgrade request at its head; the server parses it again as plain
    HTTP/1.1, so its body is read as a body and what follows as the next request."""
    request = (
        b"POST /up HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Content-Length: 4\r\n\r\nbody"
        b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    async with serving() as (port, _, _):
        answers = json_bodies(await exchange(port, request))
    assert [(a["path"], a["body"]) for a in answers] == [("/up", 4), ("/next", 0)]


async def test_a_chunked_request_body_and_a_chunked_answer() -> None:
    request = (
        b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close"
        b"\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    async with serving() as (port, _, _):
        raw = await exchange(port, request)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body.endswith(b"0\r\n\r\n")
    parts = re.findall(rb"([0-9a-f]+)\r\n(.*?)\r\n", body, re.DOTALL)
    assert all(int(size, 16) == len(data) for size, data in parts)
    assert msgspec.json.decode(b"".join(data for _, data in parts))["body"] == 11


async def test_http_10_gets_a_close_delimited_answer_unless_it_asks_to_keep_alive() -> None:
    async with serving() as (port, _, _):
        plain = await exchange(port, b"GET /chunked HTTP/1.0\r\n\r\n")
        kept = await exchange(
            port,
            b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n",
        )
    assert b"transfer-encoding" not in plain
    assert b"connection: close" in plain
    assert json_bodies(plain)[0]["version"] == "1.0"
    assert statuses(kept) == [200, 200]
    assert b"connection: keep-alive" in kept


async def test_head_answers_have_no_body() -> None:
    async with serving() as (port, _, _):
        raw = await exchange(port, b"HEAD /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert statuses(raw) == [200]
    assert b"content-length: " in head
    assert body == b""


async def test_expect_100_continue_is_answered_when_the_app_reads() -> None:
    async with serving() as (port, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                b"POST /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n"
                b"Connection: close\r\n\r\n"
            )
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WIRE_TIMEOUT_S)
            writer.write(b"ok")
            rest = await asyncio.wait_for(reader.read(), WIRE_TIMEOUT_S)
        finally:
            writer.close()
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert json_bodies(rest)[0]["body"] == 2


@pytest.mark.parametrize(
    ("request_bytes", "why"),
    [
        (b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n", b"CONNECT is not served"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b"exactly one Host"),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", b"only HTTP/1.0 and HTTP/1.1"),
        (b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n", b"not valid HTTP/1.1"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n", b"Invalid header value char"),
    ],
)
async def test_refused_heads_get_a_catalog_400_and_a_close(
    request_bytes: bytes, why: bytes
) -> None:
    async with serving() as (port, _, _):
        raw = await exchange(port, request_bytes + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(raw) == [400]
    assert why in raw
    assert b'"code":"invalid_request"' in raw
    assert b"connection: close" in raw


async def test_a_header_that_never_ends_is_431_before_it_is_buffered_whole() -> None:
    """llhttp buffers a header value until its line ends; the server counts those bytes."""
    async with serving() as (port, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
            for _ in range(20):  # 20 KiB, never a line end; the limit is 4 KiB
                writer.write(b"a" * 1024)
                await writer.drain()
                await asyncio.sleep(0.005)
            raw = await asyncio.wait_for(reader.read(), WIRE_TIMEOUT_S)
        finally:
            writer.close()
    assert statuses(raw) == [431]
    assert b"exceeds 4096 bytes" in raw


async def test_a_bad_request_after_a_good_one_is_refused_after_its_answer() -> None:
    async with serving() as (port, _, _):
        raw = await exchange(port, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
    assert statuses(raw) == [200, 400]


async def test_an_app_that_fails_before_answering_gets_a_catalog_500() -> None:
    @lifespan_too
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    async with serving(broken) as (port, _, _):
        raw = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(raw) == [500]
    assert b'"code":"internal_error"' in raw
    assert b"boom" not in raw


async def test_a_response_header_with_a_line_break_is_never_written() -> None:
    @lifespan_too
    async def injecting(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"x-evil", b"a\r\nset-cookie: b")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x"})

    async with serving(injecting) as (port, _, _):
        raw = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"set-cookie" not in raw
    assert statuses(raw) == [500]


async def test_a_client_gone_mid_request_gets_the_app_a_disconnect() -> None:
    seen: asyncio.Queue[str] = asyncio.Queue()

    @lifespan_too
    async def waiting(scope: Scope, receive: Receive, send: Send) -> None:
        while (message := await receive())["type"] != "http.disconnect":
            pass
        await seen.put(message["type"])

    async with serving(waiting) as (port, _, _):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
        assert await asyncio.wait_for(seen.get(), WIRE_TIMEOUT_S) == "http.disconnect"


async def test_the_drain_finishes_the_answer_in_progress_with_a_close_then_stops() -> None:
    started = asyncio.Event()

    @lifespan_too
    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        started.set()
        await asyncio.sleep(0.3)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    async with serving(slow) as (port, stop, task):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await started.wait()
        stop.set()
        raw = await asyncio.wait_for(reader.read(), WIRE_TIMEOUT_S)
        writer.close()
        await asyncio.wait_for(task, WIRE_TIMEOUT_S)
        with pytest.raises(ConnectionRefusedError):  # the listener closed with the drain
            await asyncio.open_connection("127.0.0.1", port)
    assert statuses(raw) == [200]
    assert b"connection: close" in raw
    assert raw.endswith(b"0\r\n\r\n")  # the whole chunked answer


async def test_the_drain_deadline_cuts_what_is_still_running() -> None:
    @lifespan_too
    async def endless(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            await asyncio.sleep(0.05)

    async with serving(endless, graceful_s=0.3) as (port, stop, task):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        stop.set()
        await asyncio.wait_for(task, WIRE_TIMEOUT_S)  # returns at the deadline
        try:
            rest = await asyncio.wait_for(reader.read(), WIRE_TIMEOUT_S)
        except ConnectionResetError:
            rest = b""  # reset: as cut as it gets
        writer.close()
    assert not rest.endswith(b"0\r\n\r\n")  # cut: the client sees an incomplete answer


async def test_a_failed_startup_is_a_startup_error_with_its_message() -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no state dir"})

    sock = bind_listener("127.0.0.1:0")
    try:
        with pytest.raises(StartupError, match="no state dir"):
            await h1_serve(
                failing, [sock], LIMITS, graceful_s=1, shutdown_trigger=asyncio.Event().wait
            )
    finally:
        sock.close()


# -- found in review: each failed before its fix --------------------------------------------


def quick(**changes: float) -> H1Limits:
    values: dict[str, float] = {
        "max_header_bytes": 4096,
        "header_timeout_s": 5,
        "keep_alive_timeout_s": 5,
        "keep_alive_max_requests": 1000,
    }
    values.update(changes)
    return H1Limits(**values)  # type: ignore[arg-type]


async def test_a_connection_that_sends_only_line_ends_still_times_out() -> None:
    """llhttp skips CRLFs between requests without a callback: they must not stop the idle
    deadline (a slowloris that costs two bytes)."""
    async with serving(limits=quick(keep_alive_timeout_s=0.3, header_timeout_s=0.3)) as (
        port,
        _,
        _,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), WIRE_TIMEOUT_S)  # closed when idle
        finally:
            writer.close()
    assert statuses(raw) == [200]


async def test_trailers_are_never_merged_into_the_headers() -> None:
    request = (
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"3\r\nabc\r\n0\r\nAuthorization: Bearer smuggled\r\nHost: other\r\n\r\n"
    )
    async with serving() as (port, _, _):
        (seen,) = json_bodies(await exchange(port, request))
    names = [name for name, _ in seen["headers"]]
    assert "authorization" not in names
    assert names.count("host") == 1


async def test_a_trailer_that_never_ends_is_431() -> None:
    async with serving() as (port, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\nX-Trailer: "
            )
            for _ in range(20):  # 20 KiB of one trailer value; the head's bound is 4 KiB
                writer.write(b"a" * 1024)
                await writer.drain()
                await asyncio.sleep(0.005)
            raw = await asyncio.wait_for(reader.read(), WIRE_TIMEOUT_S)
        finally:
            writer.close()
    assert statuses(raw) == [431]


async def slow_first(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http" and scope["path"] == "/slow":
        await asyncio.sleep(0.4)
    await echo(scope, receive, send)


async def test_bytes_after_a_refusal_that_waits_for_an_answer_are_never_parsed() -> None:
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    async with serving(slow_first) as (port, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            # the second request has no Host: refused, but only after /slow is answered
            writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), WIRE_TIMEOUT_S)
        finally:
            writer.close()
    assert statuses(raw) == [200, 400]
    assert errors == []


async def test_a_pipelined_request_with_a_bad_body_is_refused_not_started() -> None:
    request = (
        b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /bad HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n"
    )
    async with serving(slow_first) as (port, _, _):
        raw = await exchange(port, request)
    assert statuses(raw) == [200, 400]
    assert [a["path"] for a in json_bodies(raw)] == ["/slow"]


async def test_pipelining_past_the_bound_is_answered_then_refused() -> None:
    """At most MAX_PIPELINED requests wait parsed; the one past them is refused after the
    answers before it (upgrades included: each is parsed again, never recursively)."""
    one = b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n"
    async with serving(slow_first, limits=quick()) as (port, _, _):
        raw = await exchange(port, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" + one * 800)
    answered = statuses(raw)
    assert answered == [200] * (1 + MAX_PIPELINED) + [400]


async def test_a_pipelined_head_is_not_timed_while_an_answer_is_owed() -> None:
    async with serving(slow_first, limits=quick(header_timeout_s=0.2)) as (port, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /3 HTTP/1.1\r\nHo"
            )
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"st: x\r\nConnection: close\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), WIRE_TIMEOUT_S)
        finally:
            writer.close()
    assert statuses(raw) == [200, 200, 200]


async def test_the_drain_waits_for_a_request_still_finishing_after_its_client_left() -> None:
    """An app still at work for a client that left (the usage record of a cut stream) ends
    before the app's lifespan shutdown closes what it writes to."""
    events: list[str] = []

    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            events.append("lifespan shutdown")
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        await asyncio.sleep(0.3)
        events.append("request finished")

    async with serving(streaming) as (port, stop, task):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"data: 1\n\n")
        writer.close()
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, WIRE_TIMEOUT_S)
    assert events == ["request finished", "lifespan shutdown"]
