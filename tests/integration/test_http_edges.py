"""The HTTP layer below the app, on the wire: framing, head deadline, protocol errors, h2c.

Each test talks to a real router over a raw socket, so what the server engine does before
the ASGI app runs is what is checked; every test runs on both engines (`[server] engine`).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import msgspec
import pytest

from appliance.auth.keyring import hash_key
from tests.integration.router_harness import KEY, RouterUnderTest, chat, running_router

CHAT_JSON = msgspec.json.encode(chat())
AUTH = f"Authorization: Bearer {KEY}\r\n".encode()
REQUEST_ID = re.compile(rb"^[0-9a-f]{32}$")
OPERATOR = "rka-edges-operator"
ADMIN = (
    f'[admin]\ntokens = [{{ id = "oncall", sha256 = "{hash_key(OPERATOR)}", role = "operator" }}]\n'
)
WIRE_TIMEOUT_S = 10.0


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    def error(self) -> dict[str, object]:
        """The OpenAI-shaped error of this answer, checked for shape and request id."""
        assert self.headers.get(b"content-type") == b"application/json", self
        assert REQUEST_ID.match(self.headers.get(b"x-request-id", b"")), self
        error: dict[str, object] = msgspec.json.decode(self.body)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        return error


def parse_answers(raw: bytes) -> list[Answer]:
    """The HTTP/1.1 responses in `raw` (bodies sized by Content-Length), in order."""
    answers: list[Answer] = []
    for _ in range(10):
        if not raw:
            return answers
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, f"not an HTTP/1.1 response: {raw[:80]!r}"
        status_line, *lines = head.split(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 "), f"not an HTTP/1.1 response: {raw[:80]!r}"
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0"))
        answers.append(Answer(int(status_line.split()[1]), headers, rest[:length]))
        raw = rest[length:]
    raise AssertionError("more answers than any test sends")


async def exchange(port: int, data: bytes) -> list[Answer]:
    """Send `data` on a fresh connection and read until the router closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), WIRE_TIMEOUT_S)
    finally:
        writer.close()
    return parse_answers(raw)


def chunked(body: bytes) -> bytes:
    return f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


ENGINES = ("routerctl", "hypercorn")


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return f'engine = "{request.param}"\n'


@pytest.fixture
async def router(engine: str) -> RouterUnderTest:  # type: ignore[misc]
    async with running_router(max_body=1_000_000, extra=ADMIN, server_extra=engine) as running:
        yield running


def chat_requests(router: RouterUnderTest) -> int:
    return sum(1 for r in router.mocks["m0"].requests() if r["path"] == "/v1/chat/completions")


@pytest.mark.parametrize(
    "transfer_encoding",
    [b"Transfer-Encoding: chunked", b"transfer-encoding: CHUNKED", b"TRANSFER-ENCODING: Chunked"],
)
async def test_content_length_with_chunked_is_refused_and_closed(
    router: RouterUnderTest, transfer_encoding: bytes
) -> None:
    """Content-Length beside Transfer-Encoding gets one 400 and a closed connection:
    bytes after the last chunk are never run as a second request."""
    body = chunked(CHAT_JSON)
    smuggled = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Connection: close\r\n\r\n"
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + AUTH
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n".encode()
        + transfer_encoding
        + b"\r\n\r\n"
    )
    answers = await exchange(router.port, head + body + smuggled)
    assert [a.status for a in answers] == [400]
    assert answers[0].error()["code"] == "invalid_request"
    assert answers[0].headers[b"connection"] == b"close"
    assert chat_requests(router) == 0


async def test_chunked_alone_is_served(router: RouterUnderTest) -> None:
    """A chunked body without Content-Length is an ordinary request."""
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + AUTH
        + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    answers = await exchange(router.port, head + chunked(CHAT_JSON))
    assert [a.status for a in answers] == [200]


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        pytest.param(
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
            431,
            "headers_too_large",
            id="100KB-header",
        ),
        pytest.param(
            b"GET /v1/models HTTP/1.1\r\n" + AUTH + b"\r\n", 400, "invalid_request", id="no-host"
        ),
        pytest.param(
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Bad: secret\x00value\r\n\r\n",
            400,
            "invalid_request",
            id="nul-in-header-value",
        ),
        pytest.param(
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX(secret): v\r\n\r\n",
            400,
            "invalid_request",
            id="bad-header-name",
        ),
        pytest.param(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            400,
            "invalid_request",
            id="conflicting-content-length",
        ),
        pytest.param(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked, identity\r\n\r\n" + chunked(b"{}"),
            400,
            "invalid_request",
            id="unsupported-transfer-encoding",
        ),
    ],
)
async def test_http_layer_errors_have_the_catalog_shape(
    router: RouterUnderTest, request_bytes: bytes, status: int, code: str
) -> None:
    """Requests the HTTP parser refuses get OpenAI's error JSON, a request id, and a close."""
    answers = await exchange(router.port, request_bytes)
    assert [a.status for a in answers] == [status]
    error = answers[0].error()
    assert error["code"] == code
    assert "secret" not in str(error["message"])  # the client's bytes are not echoed
    assert answers[0].headers[b"connection"] == b"close"


async def test_deep_json_is_400_not_500(router: RouterUnderTest) -> None:
    """A body nested 100,000 deep is refused as invalid JSON, not a 500."""
    deep = b'{"model": "chat", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = await router.session.post(
        f"{router.url}/v1/chat/completions", data=deep, headers=router.auth
    )
    assert response.status == 400, await response.text()
    assert (await response.json())["error"]["code"] == "invalid_json"


async def test_deep_json_in_an_admin_body_is_400(router: RouterUnderTest) -> None:
    """An admin body nested 100,000 deep is a 400 naming the field (typed decoding stops at
    the first bracket), not a 500."""
    deep = b'{"limit": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = await router.session.post(
        f"{router.admin_url}/v1/admin/buffer/replay",
        data=deep,
        headers={"Authorization": f"Bearer {OPERATOR}"},
    )
    assert response.status == 400, await response.text()
    assert (await response.json())["error"]["param"] == "limit"


async def test_h2c_upgrade_is_served_as_http1(router: RouterUnderTest) -> None:
    """`Upgrade: h2c` is ignored: the answer is HTTP/1.1 and the connection stays HTTP/1.1."""
    upgrade = (
        b"GET /v1/status/healthz HTTP/1.1\r\nHost: x\r\n"
        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    then = b"GET /v1/status/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answers = await exchange(router.port, upgrade + then)
    assert [a.status for a in answers] == [200, 200]


@pytest.mark.parametrize(
    "handshake",
    [
        pytest.param(
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            id="valid",
        ),
        pytest.param(b"", id="no-key"),
    ],
)
async def test_websocket_upgrade_is_served_as_http1(
    router: RouterUnderTest, handshake: bytes
) -> None:
    """`Upgrade: websocket` is ignored too: no route serves WebSockets, the request is HTTP/1.1."""
    upgrade = (
        b"GET /v1/status/healthz HTTP/1.1\r\nHost: x\r\n"
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n" + handshake + b"\r\n"
    )
    then = b"GET /v1/status/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answers = await exchange(router.port, upgrade + then)
    assert [a.status for a in answers] == [200, 200]


async def test_h2_prior_knowledge_is_refused(router: RouterUnderTest) -> None:
    """The HTTP/2 connection preface gets an HTTP/1.1 400 and a close, never HTTP/2."""
    answers = await exchange(router.port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert [a.status for a in answers] == [400]
    assert answers[0].error()["code"] == "invalid_request"


HEAD_TIMEOUT = "header_timeout_s = 0.5\nkeep_alive_timeout_s = 30\n"


async def test_a_trickled_head_gets_408_and_a_close(engine: str) -> None:
    """A head still incomplete `header_timeout_s` after its first byte gets 408 and a close,
    also on a connection that has served a request before."""
    async with running_router(server_extra=HEAD_TIMEOUT + engine) as router:
        reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
        writer.write(b"GET /v1/status/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        served = await asyncio.wait_for(_read_answer(reader), WIRE_TIMEOUT_S)
        assert served.status == 200

        async def trickle() -> None:
            writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
            for _ in range(100):  # one byte per 0.1 s: far longer than the deadline
                await asyncio.sleep(0.1)
                writer.write(b"X")
                await writer.drain()

        trickling = asyncio.create_task(trickle())
        try:
            raw = await asyncio.wait_for(reader.read(), WIRE_TIMEOUT_S)
        finally:
            trickling.cancel()
            writer.close()
    answers = parse_answers(raw)
    assert [a.status for a in answers] == [408]
    assert answers[0].error()["code"] == "request_timeout"
    assert answers[0].headers[b"connection"] == b"close"


async def test_a_head_in_time_is_served_however_long_the_answer_and_the_idle_after(
    engine: str,
) -> None:
    """The head deadline ends when the head is complete: a slow answer and a long idle
    keep-alive after it are not cut."""
    slow = msgspec.json.encode(chat("[mock:latency_ms=800]"))
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + AUTH
        + f"Content-Length: {len(slow)}\r\n\r\n".encode()
    )
    async with running_router(server_extra=HEAD_TIMEOUT + engine) as router:
        reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
        try:
            writer.write(head[:20])  # an incomplete head arms the deadline
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(head[20:] + slow)
            first = await asyncio.wait_for(_read_answer(reader), WIRE_TIMEOUT_S)
            await asyncio.sleep(0.8)  # idle longer than the head deadline
            writer.write(b"GET /v1/status/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            second = parse_answers(await asyncio.wait_for(reader.read(), WIRE_TIMEOUT_S))
        finally:
            writer.close()
    assert [first.status, *(a.status for a in second)] == [200, 200]


async def _read_answer(reader: asyncio.StreamReader) -> Answer:
    """One response sized by Content-Length, leaving the connection open."""
    head = await reader.readuntil(b"\r\n\r\n")
    (answer,) = parse_answers(head)
    body = await reader.readexactly(int(answer.headers[b"content-length"]))
    return Answer(answer.status, answer.headers, body)
