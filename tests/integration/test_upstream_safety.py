"""Upstream safety through a real router: clients cannot pick the upstream host, no client
header but the body's content type reaches a backend, and backends' redirects are never
followed. A decoy mock backend, configured nowhere, sees whether anything leaked to it."""

from __future__ import annotations

import msgspec
import pytest

from appliance.mock.server import MockBackend
from tests.integration.router_harness import (
    KEY,
    RouterUnderTest,
    chat,
    running_router,
)
from tests.integration.test_http_edges import Answer, chunked, exchange
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


async def send(
    router: RouterUnderTest, target: str, headers: dict[str, str], body: bytes
) -> Answer:
    (answer,) = await exchange(router.port, _request(target, headers, body))
    return answer


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
            answer = await send(router, target.format(there=there), {**auth, **steer}, body)
            got[target] = answer.status
        for name in MODEL_NAMES:
            named = chat(model=name.format(url=decoy.url, there=there))
            answer = await send(router, "/v1/chat/completions", auth, msgspec.json.encode(named))
            got[name] = answer.status
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
