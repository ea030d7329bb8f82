"""Body, header and time limits against slow or oversized clients, over raw sockets."""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import pytest

from tests.integration.router_harness import KEY, RouterUnderTest, chat, running_router

MAX_BODY = 65536  # router_harness sets server.max_body_bytes to this


@pytest.fixture
async def router() -> RouterUnderTest:  # type: ignore[misc]
    async with running_router() as running:
        yield running


async def raw_exchange(port: int, head: bytes, body_parts: list[bytes], delay: float = 0) -> bytes:
    """Send a request head and body parts (optionally slowly); return what the router answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Read while writing: the router may answer and close before the body is all sent.
    answer = asyncio.create_task(read_all(reader))
    try:
        for part in [head, *body_parts]:
            if delay and part is not head:
                await asyncio.sleep(delay)
            if answer.done():
                break
            try:
                writer.write(part)
                await writer.drain()
            except ConnectionError:
                break  # the router answered and closed: that is the behaviour under test
        return await asyncio.wait_for(answer, 10)
    finally:
        answer.cancel()
        writer.close()


async def read_all(reader: asyncio.StreamReader) -> bytes:
    data = b""
    try:
        while chunk := await reader.read(65536):
            data += chunk
    except ConnectionError:
        pass
    return data


def head(length: int | None, extra: str = "") -> bytes:
    framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {KEY}\r\n"
        f"content-type: application/json\r\n{framing}\r\n{extra}\r\n"
    ).encode()


def status_and_error(answer: bytes) -> tuple[int, str]:
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), msgspec.json.decode(body)["error"]["code"]


async def test_declared_oversized_body_is_413_without_reading_it(router: RouterUnderTest) -> None:
    """A Content-Length over the limit is refused at once, before the body is sent."""
    answer = await raw_exchange(router.port, head(50 * 1024 * 1024), [])
    assert status_and_error(answer) == (413, "request_too_large")
    assert b"connection: close" in answer.lower()


async def test_a_client_still_sending_a_refused_body_reads_the_413() -> None:
    """The router closes a refused upload by lingering: a client whose megabytes are still
    unread when the 413 goes out reads the 413, not a reset (RFC 9112 §9.6)."""
    async with running_router() as router:
        reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
        try:
            # More than the socket buffers take: bytes stay unread when the router closes.
            writer.write(head(100 * 1024 * 1024) + b" " * (8 * 1024 * 1024))
            await asyncio.sleep(0.3)  # the router has answered and closed meanwhile
            answer = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
    assert status_and_error(answer) == (413, "request_too_large")


async def test_a_client_slow_to_read_still_gets_the_413() -> None:
    """A client that keeps sending a refused upload and reads only half a second later still
    reads the 413: past the lingering close's byte bound the router stops reading and keeps
    the connection until the time bound, rather than resetting it (which makes the client's
    system discard the unread answer)."""
    async with running_router() as router:
        reader, writer = await asyncio.open_connection("127.0.0.1", router.port)

        async def keep_sending() -> None:
            writer.write(head(100 * 1024 * 1024))
            with contextlib.suppress(ConnectionError):
                for _ in range(48):  # 48 MiB: past LINGER_BYTES, bounded
                    writer.write(b" " * (1024 * 1024))
                    await writer.drain()

        sending = asyncio.create_task(keep_sending())
        try:
            await asyncio.sleep(0.5)  # a client busy elsewhere before it reads
            answer = await asyncio.wait_for(read_all(reader), 10)
        finally:
            sending.cancel()
            writer.close()
    assert status_and_error(answer) == (413, "request_too_large")


async def test_chunked_oversized_body_is_413(router: RouterUnderTest) -> None:
    """A chunked body that grows past the limit is refused when it crosses it."""
    chunk = b"x" * 16384
    parts = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 8
    answer = await raw_exchange(router.port, head(None), parts)
    assert status_and_error(answer) == (413, "request_too_large")
    assert router.mocks["m0"].requests() == []


async def test_body_at_the_limit_is_accepted(router: RouterUnderTest) -> None:
    """A body of exactly max_body_bytes passes the edge (and is then checked as JSON)."""
    body = msgspec.json.encode(chat("x"))
    body += b" " * (MAX_BODY - len(body))
    answer = await raw_exchange(router.port, head(len(body), "connection: close\r\n"), [body])
    assert answer.startswith(b"HTTP/1.1 200")


async def test_slow_body_is_408(router: RouterUnderTest) -> None:
    """A body trickling in slower than body_read_timeout_s gets 408 and the connection closes."""
    body = msgspec.json.encode(chat())
    parts = [body[i : i + 4] for i in range(0, len(body), 4)]
    answer = await raw_exchange(router.port, head(len(body)), parts, delay=0.2)
    assert status_and_error(answer) == (408, "request_timeout")


async def test_oversized_headers_are_refused(router: RouterUnderTest) -> None:
    """Headers beyond server.max_header_bytes are refused by the server, never served."""
    big = "x-filler: " + "a" * 20000 + "\r\n"
    answer = await raw_exchange(router.port, head(2, big), [b"{}"])
    assert status_and_error(answer) == (431, "headers_too_large")
    assert router.mocks["m0"].requests() == []


async def test_endless_header_stream_is_cut_off(router: RouterUnderTest) -> None:
    """Headers that never end are dropped by the HTTP parser's buffer limit, not buffered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    try:
        writer.write(b"GET /v1/models HTTP/1.1\r\nhost: t\r\n")
        for _ in range(40):  # 40 x 1 KiB of header lines, never the blank line
            try:
                writer.write(b"x-more: " + b"b" * 1016 + b"\r\n")
                await writer.drain()
            except ConnectionError:
                break
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert not answer.startswith(b"HTTP/1.1 200")


async def test_bad_content_length_is_400(router: RouterUnderTest) -> None:
    """A Content-Length that is not a number is rejected."""
    answer = await raw_exchange(
        router.port, head(None).replace(b"transfer-encoding: chunked", b"content-length: 12abc"), []
    )
    assert answer.split()[1] == b"400"


async def test_client_leaving_mid_body_costs_nothing(router: RouterUnderTest) -> None:
    """A client that disconnects while sending its body leaves no request behind."""
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    writer.write(head(1000) + b'{"model": ')
    await writer.drain()
    writer.close()
    await asyncio.sleep(0.2)
    response = await router.post("/v1/chat/completions", chat())
    assert response.status == 200
    await response.read()  # releases the connection
    assert len(router.mocks["m0"].requests()) == 1
    del reader
