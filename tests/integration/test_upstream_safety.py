"""Upstream safety through a real router: clients cannot pick the upstream host, no client
header reaches a backend, and backends' redirects are never followed. A decoy mock backend,
configured nowhere, sees whether anything leaked to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import pytest
from aiohttp import web

from appliance.mock.server import MockBackend
from tests.integration.router_harness import (
    BACKEND_SECRET,
    KEY,
    RouterUnderTest,
    chat,
    running_router,
)
from tests.integration.test_http_edges import chunked
from tests.reliability import Figures

# Headers a backend may see: the router's own (content type, framing, its key and fixed
# headers, the request id) and aiohttp's. Everything else would have come from the client.
ROUTER_HEADERS = frozenset({
    "host", "content-type", "content-length", "accept", "accept-encoding", "authorization",
    "x-extra", "x-request-id",
})  # fmt: skip


def _request(target: str, headers: dict[str, str], body: bytes) -> bytes:
    """An HTTP/1.1 request with a chunked body; the connection closes after the answer."""
    head = f"POST {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body)


async def send(router: RouterUnderTest, target: str, headers: dict[str, str], body: bytes) -> int:
    """The status the router answers a raw request with (it closes the connection after)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    try:
        writer.write(_request(target, headers, body))
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return int(raw.split(b" ", 2)[1])


def _backend_saw(router: RouterUnderTest) -> list[dict[str, object]]:
    return router.mocks["m0"].requests()


# Request targets that name another host or a path around the route: absolute-form (which
# HTTP/1.1 servers must accept, and serve from their own routes), network-path, dot segments.
TARGETS = {
    "/v1/chat/completions": 200,
    "http://{there}/v1/chat/completions": 200,
    "HTTPS://{there}/v1/chat/completions": 200,
    "//{there}/v1/chat/completions": 404,
    "/v1/x/../chat/completions": 404,
    "/v1/./chat/completions": 404,
    "/v1//chat/completions": 404,
    "http://{there}": 404,
    "*": 404,
}
# Model names that look like a place: none is configured, so none reaches any backend.
MODEL_NAMES = (
    "{url}",
    "{url}/chat/completions",
    "//{there}/v1",
    "../chat",
    "chat/../chat",
    "../../_mock/requests",
    "chat/../../../etc/passwd",
    "chat?x=1",
    "chat#x",
    "chat@{there}",
)


@pytest.mark.reliability("8.1", "clients cannot choose the upstream host or path")
async def test_clients_cannot_choose_the_upstream(figures: Figures) -> None:
    """Host, forwarding headers, absolute and odd request targets, base-URL body fields and
    model names holding URLs or `..` never send a request anywhere but the configured
    backend's route; an unconfigured model name reaches no backend at all."""
    async with running_router() as router, MockBackend(seed=9) as decoy:
        there = f"127.0.0.1:{decoy.port}"
        steer = {
            "Host": there,
            "X-Forwarded-Host": there,
            "X-Forwarded-Proto": "http",
            "X-Forwarded-Port": str(decoy.port),
            "Forwarded": f"host={there};proto=http",
            "X-Original-URL": f"http://{there}/v1/chat/completions",
            "X-Rewrite-URL": f"http://{there}/v1/chat/completions",
            "X-Host": there,
        }
        body = msgspec.json.encode(chat(api_base=decoy.url, base_url=decoy.url, url=decoy.url))
        auth = {"Host": "localhost", "Authorization": f"Bearer {KEY}", "Connection": "close"}
        got = {}
        for target in TARGETS:
            got[target] = await send(router, target.format(there=there), {**auth, **steer}, body)
        for name in MODEL_NAMES:
            named = chat(model=name.format(url=decoy.url, there=there))
            got[name] = await send(router, "/v1/chat/completions", auth, msgspec.json.encode(named))
        paths = {str(r["path"]) for r in router.mocks["m0"].requests()}
    leaked = int(decoy.stats()["requests"])  # type: ignore[call-overload]
    figures.add("steering attempts", len(TARGETS) + len(MODEL_NAMES))
    figures.add("requests reaching a host not configured", leaked, bound=0)
    figures.add(
        "backend paths other than the route's", len(paths - {"/v1/chat/completions"}), bound=0
    )
    assert got == TARGETS | dict.fromkeys(MODEL_NAMES, 404)
    assert leaked == 0
    assert paths == {"/v1/chat/completions"}


# Hop-by-hop headers (RFC 9110 §7.6.1, and one the client names in Connection), the client's
# credentials, and ordinary client headers: none of them is the backend's business.
CLIENT_HEADERS = {
    "Connection": "close, X-Hop-Leak",
    "X-Hop-Leak": "hop-leak",
    "Keep-Alive": "timeout=99",
    "TE": "trailers",
    "Trailer": "X-Trailer-Leak",
    "Upgrade": "websocket",
    "Proxy-Authorization": "Basic bGVhazpsZWFr",
    "Proxy-Connection": "keep-alive",
    "Cookie": "session=client-cookie-leak",
    "X-Api-Key": "client-x-api-key-leak",
    "OpenAI-Organization": "org-client-leak",
    "User-Agent": "client-agent-leak/1.0",
    "Accept": "text/client-leak",
    "Accept-Encoding": "gzip, br",
}


def _forwarded(mock: MockBackend) -> list[dict[str, str]]:
    return [
        {k.lower(): v for k, v in r["headers"].items()}  # type: ignore[attr-defined]
        for r in mock.requests()
        if r["path"] == "/v1/chat/completions"
    ]


@pytest.mark.reliability("8.2", "hop-by-hop headers and the client's Authorization not forwarded")
async def test_no_client_header_reaches_a_backend(figures: Figures) -> None:
    """A backend sees only the router's headers: never a hop-by-hop header, never the client's
    Authorization or other credentials, whether or not the backend has a key of its own."""
    async with MockBackend(seed=9) as keyless:
        extra = (
            f'[[backends]]\nid = "keyless"\nurl = "{keyless.url}"\n\n'
            '[[models]]\nname = "keyless"\nbackends = [{ backend = "keyless" }]\n'
        )
        async with running_router(extra=extra) as router:
            headers = {"Host": "localhost", "Authorization": f"Bearer {KEY}", **CLIENT_HEADERS}
            for model in ("chat", "keyless"):
                for stream in (False, True):
                    body = msgspec.json.encode(chat(model=model, stream=stream))
                    assert await send(router, "/v1/chat/completions", headers, body) == 200
            seen = _forwarded(router.mocks["m0"]) + _forwarded(keyless)
            keyed, unkeyed = _forwarded(router.mocks["m0"]), _forwarded(keyless)
    secrets = ("leak", "bGVhaz", KEY, "timeout=99", "trailers", "websocket", "gzip")
    leaked = sorted({n for h in seen for n, v in h.items() if n not in ROUTER_HEADERS})
    leaked += sorted({v for h in seen for v in h.values() if any(s in v for s in secrets)})
    figures.add("client headers sent", len(CLIENT_HEADERS) + 1)
    figures.add("backend requests checked", len(seen))
    figures.add("client headers reaching a backend", len(leaked), bound=0)
    assert (len(keyed), len(unkeyed)) == (2, 2)
    assert leaked == []
    assert {h["authorization"] for h in keyed} == {f"Bearer {BACKEND_SECRET}"}
    assert all("authorization" not in h for h in unkeyed)
    assert {h["accept-encoding"] for h in seen} == {"identity"}


REDIRECTS = (301, 302, 303, 307, 308)


@asynccontextmanager
async def redirector(target: str, hits: list[str]) -> AsyncIterator[str]:
    """A backend answering every request with the next redirect to `target` (the same path
    there), `/ok` with 200; yields its /v1 URL and records each path it was asked for."""
    statuses = iter(REDIRECTS * 10)

    async def handle(request: web.Request) -> web.Response:
        hits.append(request.path)
        if request.path == "/ok":
            return web.Response(text="ok")
        return web.Response(status=next(statuses), headers={"Location": target + request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


@pytest.mark.reliability("8.3", "redirects from backends are not followed")
async def test_backend_redirects_are_never_followed(figures: Figures) -> None:
    """Every redirect status a backend answers, to JSON and stream requests and to health
    probes, ends at that backend: the client gets 502 upstream_redirect and the redirect's
    target, another host, is never contacted."""
    hits: list[str] = []
    async with MockBackend(seed=9) as decoy, redirector(decoy.url.removesuffix("/v1"), hits) as url:
        extra = (
            "[routing]\nhealth_interval_s = 0.1\nconsecutive_failures = 1000\n\n"
            f'[[backends]]\nid = "moved"\nurl = "{url}"\nhealth_path = "/ok"\n\n'
            f'[[backends]]\nid = "probe-moved"\nurl = "{url}"\nhealth_path = "/health"\n\n'
            '[[models]]\nname = "moved"\nbackends = [{ backend = "moved" }]\n'
        )
        async with running_router(extra=extra) as router:
            codes = []
            for stream in (False, True) * len(REDIRECTS):
                response = await router.post(
                    "/v1/chat/completions", chat(model="moved", stream=stream)
                )
                codes.append((response.status, (await response.json())["error"]["code"]))
            for _ in range(100):  # probes of the redirecting health path, bounded
                if hits.count("/health") >= 3:
                    break
                await asyncio.sleep(0.05)
        leaked = int(decoy.stats()["requests"])  # type: ignore[call-overload]
    figures.add("redirects answered", hits.count("/v1/chat/completions") + hits.count("/health"))
    figures.add("redirects followed", leaked, bound=0)
    assert codes == [(502, "upstream_redirect")] * 2 * len(REDIRECTS)
    assert hits.count("/v1/chat/completions") == 2 * len(REDIRECTS)  # no retry of the same
    assert hits.count("/health") >= 3
    assert leaked == 0
