"""The inference routes' ASGI fast path: what it serves, what it leaves to Quart, disconnects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from appliance.errors import InternalError, ModelNotFound, StoreUnavailable
from appliance.http.context import CONTEXT_KEY, RequestContext
from appliance.http.edge import Message, Scope
from appliance.http.fast_path import InferenceFastPath
from appliance.http.inference import Answer, InferenceHandler
from appliance.sqlite_support import StoreError
from appliance.upstream.payload import Endpoint

RATE = {"x-ratelimit-limit-requests": "10"}


class FakeHandler:
    """Stands in for InferenceHandler: answers what it is given, records what it was asked."""

    def __init__(self, answer: Answer | None = None, error: BaseException | None = None) -> None:
        self.result = answer or Answer(200, "application/json", dict(RATE), b'{"ok":1}')
        self.error = error
        self.calls: list[tuple[Endpoint, str | None]] = []
        self.started = asyncio.Event()
        self.hold = False  # wait until cancelled
        self.cancelled = False

    async def answer(
        self, endpoint: Endpoint, _context: RequestContext, authorization: str | None
    ) -> Answer:
        self.calls.append((endpoint, authorization))
        self.started.set()
        if self.hold:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        if self.error is not None:
            raise self.error
        return self.result


class Client:
    """One request's ASGI receive/send: the body, then a disconnect when `leave` is set."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.leave = asyncio.Event()
        self._body_sent = False

    async def receive(self) -> Message:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)


def http_scope(method: str, path: str) -> Scope:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(b"authorization", b"Bearer k1"), (b"authorization", b"Bearer k2")],
        CONTEXT_KEY: RequestContext("rid", method, path, "rid"),
    }


def serve_chat(app: InferenceFastPath, client: Client) -> asyncio.Task[None]:
    """A chat completion being served, as a task the test can cancel or await."""
    return asyncio.create_task(
        app(http_scope("POST", "/v1/chat/completions"), client.receive, client.send)
    )


def fast_path(handler: FakeHandler) -> tuple[InferenceFastPath, list[Scope]]:
    to_quart: list[Scope] = []

    async def quart(scope: Scope, receive: Any, send: Any) -> None:
        to_quart.append(scope)

    return InferenceFastPath(cast(InferenceHandler, handler), quart), to_quart


@pytest.mark.parametrize(
    ("path", "endpoint"),
    [
        ("/v1/chat/completions", Endpoint.CHAT),
        ("/v1/completions", Endpoint.COMPLETIONS),
        ("/v1/embeddings", Endpoint.EMBEDDINGS),
        ("/v1/responses", Endpoint.RESPONSES),
    ],
)
async def test_inference_posts_are_served_without_quart(path: str, endpoint: Endpoint) -> None:
    """A POST to an inference route is answered by the handler with Quart's headers."""
    handler = FakeHandler()
    app, to_quart = fast_path(handler)
    client = Client()
    await app(http_scope("POST", path), client.receive, client.send)
    assert to_quart == []
    assert handler.calls == [(endpoint, "Bearer k1")]  # the first header, as Quart reads it
    start, body = client.sent
    assert start == {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", b"8"),
            (b"x-ratelimit-limit-requests", b"10"),
        ],
    }
    assert body == {"type": "http.response.body", "body": b'{"ok":1}', "more_body": False}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/chat/completions"),
        ("PUT", "/v1/embeddings"),
        ("POST", "/v1/chat/completions/"),
        ("POST", "/v1/models"),
        ("GET", "/v1/models"),
    ],
)
async def test_other_requests_go_to_quart(method: str, path: str) -> None:
    """Other methods and paths, trailing slashes included, are left to Quart's routing."""
    handler = FakeHandler()
    app, to_quart = fast_path(handler)
    client = Client()
    scope = http_scope(method, path)
    await app(scope, client.receive, client.send)
    assert to_quart == [scope]
    assert handler.calls == []


async def test_lifespan_goes_to_quart() -> None:
    """Non-HTTP scopes (lifespan) reach Quart."""
    app, to_quart = fast_path(FakeHandler())
    client = Client()
    await app({"type": "lifespan"}, client.receive, client.send)
    assert to_quart == [{"type": "lifespan"}]


async def chunks(closed: list[bool], count: int, then_wait: bool = False) -> AsyncIterator[bytes]:
    try:
        for i in range(count):
            yield f"data: {i}\n\n".encode()
        if then_wait:
            await asyncio.Event().wait()
    finally:
        closed.append(True)


async def test_a_stream_is_framed_as_quart_frames_it() -> None:
    """Each chunk is one message with more to come, then an empty closing message."""
    closed: list[bool] = []
    headers = {"cache-control": "no-cache", "x-accel-buffering": "no", **RATE}
    answer = Answer(200, "text/event-stream", headers, stream=chunks(closed, 2))
    app, _ = fast_path(FakeHandler(answer))
    client = Client()
    await app(http_scope("POST", "/v1/chat/completions"), client.receive, client.send)
    start, *body = client.sent
    assert start["headers"] == [
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
        (b"x-ratelimit-limit-requests", b"10"),
    ]
    assert [(m["body"], m["more_body"]) for m in body] == [
        (b"data: 0\n\n", True),
        (b"data: 1\n\n", True),
        (b"", False),
    ]
    assert closed == [True]


async def test_client_leaving_cancels_the_work() -> None:
    """A disconnect while the handler waits cancels it; the request ends without an error."""
    handler = FakeHandler()
    handler.hold = True
    app, _ = fast_path(handler)
    client = Client()
    served = serve_chat(app, client)
    await asyncio.wait_for(handler.started.wait(), 5)
    client.leave.set()
    await asyncio.wait_for(served, 5)  # returns normally: the edge then records the request
    assert handler.cancelled
    assert client.sent == []


async def test_client_leaving_mid_stream_closes_the_stream() -> None:
    """A disconnect mid-stream stops the relay and closes the stream (the upstream with it)."""
    closed: list[bool] = []
    answer = Answer(200, "text/event-stream", {}, stream=chunks(closed, 1, then_wait=True))
    app, _ = fast_path(FakeHandler(answer))
    client = Client()
    served = serve_chat(app, client)
    for _ in range(100):  # until the first chunk went out
        if len(client.sent) == 2:
            break
        await asyncio.sleep(0.01)
    client.leave.set()
    await asyncio.wait_for(served, 5)
    assert closed == [True]
    assert all(m.get("more_body", True) for m in client.sent)  # no closing message


async def test_a_cancellation_from_elsewhere_still_propagates() -> None:
    """Shutdown cancelling the request is not mistaken for a client leaving."""
    handler = FakeHandler()
    handler.hold = True
    app, _ = fast_path(handler)
    client = Client()
    served = serve_chat(app, client)
    await asyncio.wait_for(handler.started.wait(), 5)
    served.cancel()
    with pytest.raises(asyncio.CancelledError):
        await served


async def test_a_disconnect_after_the_answer_cancels_nothing() -> None:
    """Once the answer is sent the watcher is gone: what runs after it is not cancelled."""
    app, _ = fast_path(FakeHandler())
    client = Client()
    await app(http_scope("POST", "/v1/chat/completions"), client.receive, client.send)
    client.leave.set()
    for _ in range(5):
        await asyncio.sleep(0)  # would raise CancelledError had the watcher fired
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (ModelNotFound("no"), ModelNotFound),
        (StoreError("disk"), StoreUnavailable),
        (ValueError("secret detail"), InternalError),
    ],
)
async def test_failures_become_catalog_errors(raised: Exception, expected: type) -> None:
    """Errors reach the edge as catalog errors, which it renders as Quart's handlers would."""
    app, _ = fast_path(FakeHandler(error=raised))
    client = Client()
    with pytest.raises(expected) as caught:
        await app(http_scope("POST", "/v1/chat/completions"), client.receive, client.send)
    assert "secret" not in caught.value.body().decode()  # type: ignore[attr-defined]
    assert client.sent == []
