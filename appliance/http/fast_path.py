"""The inference routes over plain ASGI, in front of Quart.

POST /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/responses are nearly all
of the traffic.
Served here they skip Quart's per-request work (Request and Response objects, app and request
contexts, two tasks per request); the answer is `InferenceHandler`'s, the same Quart's routes
give. Everything else, other methods on these paths included, goes to Quart unchanged.
Runs inside `EdgeMiddleware`, which gives the request its context and body and renders the
RouterErrors raised here as Quart's error handlers would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from urllib.parse import urlsplit

from appliance.errors import RouterError
from appliance.http.context import RequestContext, request_context
from appliance.http.edge import ASGIApp, Message, Receive, Scope, Send
from appliance.http.errors import catalog_error
from appliance.http.inference import Answer, InferenceHandler
from appliance.upstream.payload import Endpoint

ROUTES: Mapping[str, Endpoint] = {endpoint.route: endpoint for endpoint in Endpoint}


class InferenceFastPath:
    """ASGI app: the inference POST routes served directly, the rest by `fallback` (Quart)."""

    def __init__(self, handler: InferenceHandler, fallback: ASGIApp) -> None:
        self._handler = handler
        self._fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = (
            ROUTES.get(scope["path"]) or _absolute_form(scope["path"])
            if scope["type"] == "http" and scope["method"] == "POST"
            else None
        )
        if endpoint is None:
            await self._fallback(scope, receive, send)
            return
        context = request_context(scope)
        task = asyncio.current_task()
        assert task is not None
        watch = _DisconnectWatch(receive, task)
        try:
            answer = await self._answer(endpoint, scope, context)
            await _send_answer(send, answer)
        except asyncio.CancelledError:
            # The client left: the work stops, as under Quart, and the edge records what it
            # got. A cancellation from elsewhere (shutdown) still propagates.
            if not watch.client_left or task.uncancel() > 0:
                raise
        finally:
            watch.stop()  # before any await: a late disconnect must not cancel what follows

    async def _answer(self, endpoint: Endpoint, scope: Scope, context: RequestContext) -> Answer:
        try:
            return await self._handler.answer(endpoint, context, _authorization(scope))
        except RouterError:
            raise  # rendered by the edge
        except Exception as error:
            raise catalog_error(error, context.request_id) from None


def _absolute_form(target: str) -> Endpoint | None:
    """The route of an absolute-form target (`POST http://host/v1/chat/completions`), which
    HTTP/1.1 servers must accept: its path is the route, its host is never used. Without
    this Quart, which strips the host, would send it to the rule the fast path owns."""
    if target.startswith("/"):
        return None  # an origin-form path that is no inference route
    parts = urlsplit(target)
    return ROUTES.get(parts.path) if parts.scheme in ("http", "https") else None


def _authorization(scope: Scope) -> str | None:
    """The first Authorization header, decoded as Quart decodes headers."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            decoded: str = value.decode("latin1")
            return decoded
    return None


async def _send_answer(send: Send, answer: Answer) -> None:
    headers = [(b"content-type", answer.content_type.encode())]
    stream = answer.stream
    if stream is None:
        headers.append((b"content-length", str(len(answer.body)).encode()))
    headers.extend((name.encode(), value.encode()) for name, value in answer.headers.items())
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    if stream is None:
        # One closing message: the edge commits the usage record before it goes out.
        await send({"type": "http.response.body", "body": answer.body, "more_body": False})
        return
    try:
        async for chunk in stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()  # the relay's own cleanup runs now, even when the client left
    await send({"type": "http.response.body", "body": b"", "more_body": False})


class _DisconnectWatch:
    """Cancels the request's task when the client disconnects, as Quart's receiver does.

    One task per request waits on receive() (Quart runs two per request); a done-callback,
    not a second await, does the cancelling.
    """

    __slots__ = ("_active", "_request", "_watcher", "client_left")

    def __init__(self, receive: Receive, request: asyncio.Task[None]) -> None:
        self._request = request
        self._active = True
        self.client_left = False
        self._watcher = asyncio.ensure_future(_until_disconnect(receive))
        self._watcher.add_done_callback(self._on_done)

    def _on_done(self, watcher: asyncio.Future[None]) -> None:
        if watcher.cancelled() or watcher.exception() is not None or not self._active:
            return
        self.client_left = True
        self._request.cancel()

    def stop(self) -> None:
        self._active = False
        self._watcher.cancel()


async def _until_disconnect(receive: Receive) -> None:
    # Ends with the connection: a disconnect arrives at its close at the latest.
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return
