"""Every error a client can get, with its exact status and code, through a real router."""

from __future__ import annotations

import asyncio

import aiohttp
import msgspec
import pytest

from tests.integration.router_harness import (
    DISABLED_KEY,
    DISABLED_ORG_KEY,
    RESTRICTED_KEY,
    RouterUnderTest,
    chat,
    running_router,
)


@pytest.fixture
async def router() -> RouterUnderTest:  # type: ignore[misc]
    async with running_router() as running:
        yield running


async def expect_error(
    response: aiohttp.ClientResponse, status: int, code: str, param: str | None = None
) -> dict[str, object]:
    assert response.status == status, await response.text()
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-request-id")
    error: dict[str, object] = (await response.json())["error"]
    assert error["code"] == code
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "invalid_api_key"),
        ({"Authorization": "Bearer rk-unknown"}, 401, "invalid_api_key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, "invalid_api_key"),
        ({"Authorization": f"Bearer {DISABLED_ORG_KEY}"}, 403, "organization_disabled"),
        ({"Authorization": f"Bearer {DISABLED_KEY}"}, 401, "invalid_api_key"),
    ],
)
async def test_auth_errors(
    router: RouterUnderTest, headers: dict[str, str], status: int, code: str
) -> None:
    """Missing, unknown and revoked keys get 401, a disabled org's 403; none reaches a backend."""
    response = await router.session.post(
        f"{router.url}/v1/chat/completions", json=chat(), headers=headers
    )
    error = await expect_error(response, status, code)
    assert "rk-unknown" not in str(error["message"])
    assert router.mocks["m0"].requests() == []


async def test_unknown_and_forbidden_models_are_404(router: RouterUnderTest) -> None:
    """An unknown model and a model the key may not use both answer 404 model_not_found."""
    await expect_error(
        await router.post("/v1/chat/completions", {**chat(), "model": "gpt-9"}),
        404,
        "model_not_found",
        "model",
    )
    response = await router.post(
        "/v1/chat/completions",
        {**chat(), "model": "other"},
        {"Authorization": f"Bearer {RESTRICTED_KEY}"},
    )
    await expect_error(response, 404, "model_not_found", "model")


@pytest.mark.parametrize(
    ("raw", "code", "param"),
    [
        (b"{not json", "invalid_json", None),
        (b"", "invalid_json", None),
        (b"[1, 2]", "invalid_request", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "invalid_request", "model"),
        (b'{"model": "chat"}', "invalid_request", "messages"),
        (b'{"model": "chat", "messages": "hi"}', "invalid_request", "messages"),
        (b'{"model": 7, "messages": []}', "invalid_request", "model"),
        (
            b'{"model": "chat", "messages": [{"role": "user"}], "max_tokens": "5"}',
            "invalid_request",
            "max_tokens",
        ),
    ],
)
async def test_bad_bodies_are_400_with_param(
    router: RouterUnderTest, raw: bytes, code: str, param: str | None
) -> None:
    """Malformed JSON, wrong types and missing fields are 400 naming the parameter."""
    response = await router.session.post(
        f"{router.url}/v1/chat/completions",
        data=raw,
        headers={**router.auth, "content-type": "application/json"},
    )
    await expect_error(response, 400, code, param)


async def test_unknown_route_and_wrong_method(router: RouterUnderTest) -> None:
    """Unknown paths are 404 naming the method and path (an OpenAI endpoint this router does
    not offer says what it does serve), and wrong methods 405, in OpenAI's shape."""
    async with router.session.get(f"{router.url}/v1/nope", headers=router.auth) as response:
        error = await expect_error(response, 404, "not_found")
    assert "does not serve GET /v1/nope" in str(error["message"])
    images = f"{router.url}/v1/images/generations"
    async with router.session.post(images, json={}, headers=router.auth) as response:
        error = await expect_error(response, 404, "not_found")
    message = str(error["message"])
    assert "does not serve POST /v1/images/generations. It serves POST /v1/chat" in message
    assert "POST /v1/responses" in message
    async with router.session.get(f"{router.url}/x" * 100, headers=router.auth) as response:
        error = await expect_error(response, 404, "not_found")
    assert str(error["message"]).startswith("No such route: GET /x")
    assert len(str(error["message"])) < 260  # the path is cut, not echoed whole
    async with router.session.get(
        f"{router.url}/v1/chat/completions", headers=router.auth
    ) as response:
        await expect_error(response, 405, "method_not_allowed")


async def test_connect_failure_is_502(router: RouterUnderTest) -> None:
    """A backend nobody listens on gives 502 upstream_connect_error."""
    response = await router.post("/v1/chat/completions", {**chat(), "model": "nowhere"})
    error = await expect_error(response, 502, "upstream_connect_error")
    assert "127.0.0.1" not in str(error["message"])  # no upstream address leaks


async def test_backend_5xx_is_502(router: RouterUnderTest) -> None:
    """A backend 5xx becomes 502 upstream_error naming the status."""
    response = await router.post("/v1/chat/completions", chat("[mock:status=503]"))
    error = await expect_error(response, 502, "upstream_error")
    assert "503" in str(error["message"])


async def test_slow_first_byte_is_504(router: RouterUnderTest) -> None:
    """No response headers within ttfb_timeout_s gives 504 upstream_timeout."""
    response = await router.post("/v1/chat/completions", chat("[mock:latency_ms=3000]"))
    await expect_error(response, 504, "upstream_timeout")


async def test_hanging_backend_is_504_not_a_hang(router: RouterUnderTest) -> None:
    """A backend that never answers is cut off by the router's timeouts."""
    response = await asyncio.wait_for(router.post("/v1/chat/completions", chat("[mock:hang]")), 5)
    await expect_error(response, 504, "upstream_timeout")


async def test_error_body_is_openai_shape_for_sdk(router: RouterUnderTest) -> None:
    """The error JSON decodes exactly as OpenAI's error object."""
    response = await router.session.post(f"{router.url}/v1/chat/completions", json=chat())
    body = msgspec.json.decode(await response.read())
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] is None
