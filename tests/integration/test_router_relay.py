"""Routing and relay through a real router: JSON, streams, headers, disconnects."""

from __future__ import annotations

import asyncio
import io
import time

import msgspec

from tests.integration.router_harness import (
    BACKEND_SECRET,
    KEY,
    RESTRICTED_KEY,
    RouterUnderTest,
    chat,
    chat_requests,
    running_router,
)


async def _last_request(router: RouterUnderTest, mock: str = "m0") -> dict[str, object]:
    records = router.mocks[mock].requests()
    assert records, "the backend saw no request"
    return records[-1]


async def test_chat_completion_is_relayed_and_rewritten() -> None:
    """A chat completion reaches the backend with its model name and key, and returns as the
    backend wrote it except that `model` is the name the client asked for."""
    async with running_router() as router:
        response = await router.post("/v1/chat/completions", chat(max_tokens=4))
        assert response.status == 200
        assert response.headers["content-type"].startswith("application/json")
        body = await response.read()
        answer = msgspec.json.decode(body)
        assert answer["object"] == "chat.completion"
        assert answer["model"] == "chat"  # what the client asked for, not the backend's name
        assert answer["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
        seen = await _last_request(router)
        headers = {k.lower(): v for k, v in seen["headers"].items()}  # type: ignore[attr-defined]
        assert headers["authorization"] == f"Bearer {BACKEND_SECRET}"
        assert KEY not in str(seen)
        assert headers["x-extra"] == "on"
        assert headers["x-request-id"] == response.headers["x-request-id"]
        assert seen["body"]["model"] == "up-m0"  # type: ignore[index]
        assert seen["body"]["messages"] == chat()["messages"]  # type: ignore[index]


async def test_a_stream_names_the_model_the_client_asked_for() -> None:
    """Every event of a stream says `model: chat`, though the backend says `up-m0`; the
    rest of each event is the backend's."""
    async with running_router() as router:
        response = await router.post("/v1/chat/completions", {**chat(), "stream": True})
        assert response.status == 200
        text = (await response.read()).decode()
    events = [e.removeprefix("data: ") for e in text.split("\n\n") if e.startswith("data: {")]
    assert len(events) >= 3
    assert {msgspec.json.decode(e)["model"] for e in events} == {"chat"}
    assert "up-m0" not in text


async def test_completions_and_embeddings() -> None:
    """The completions and embeddings endpoints route the same way."""
    async with running_router() as router:
        response = await router.post("/v1/completions", {"model": "chat", "prompt": "a b c"})
        assert response.status == 200
        assert (await response.json())["object"] == "text_completion"
        response = await router.post("/v1/embeddings", {"model": "chat", "input": ["x", "y"]})
        assert response.status == 200
        answer = await response.json()
        assert [d["index"] for d in answer["data"]] == [0, 1]


async def test_large_body_is_forwarded_whole() -> None:
    """A multi-megabyte request body reaches the backend intact."""
    content = "word " * 600_000  # ~3 MB
    async with running_router(max_body=4 * 1024 * 1024) as router:
        body = io.BytesIO(msgspec.json.encode(chat(content, max_tokens=1)))
        response = await router.session.post(
            f"{router.url}/v1/chat/completions", data=body, headers=router.auth
        )
        assert response.status == 200
        assert (await response.json())["usage"]["prompt_tokens"] == 600_000


async def test_backend_4xx_is_relayed_unchanged() -> None:
    """A backend's own 4xx answer reaches the client with its status and body."""
    async with running_router() as router:
        response = await router.post("/v1/chat/completions", chat("[mock:status=422]"))
        assert response.status == 422
        assert "error" in await response.json()


async def test_models_lists_only_what_the_key_may_use() -> None:
    """GET /v1/models is filtered by the key's allow-list."""
    async with running_router() as router:
        async with router.session.get(f"{router.url}/v1/models", headers=router.auth) as response:
            assert response.status == 200
            names = [m["id"] for m in (await response.json())["data"]]
        assert names == ["chat", "nowhere", "other"]
        headers = {"Authorization": f"Bearer {RESTRICTED_KEY}"}
        async with router.session.get(f"{router.url}/v1/models", headers=headers) as response:
            assert [m["id"] for m in (await response.json())["data"]] == ["chat"]


async def test_one_model_is_found_by_name_only_if_the_key_may_use_it() -> None:
    """GET /v1/models/{id}: the model object for an allowed name; 404 model_not_found alike
    for an unknown name and one the key may not use."""
    async with running_router() as router:
        url = f"{router.url}/v1/models"
        async with router.session.get(f"{url}/chat", headers=router.auth) as response:
            assert response.status == 200
            assert await response.json() == {
                "id": "chat", "object": "model", "created": 0, "owned_by": "routerctl",
            }  # fmt: skip
        restricted = {"Authorization": f"Bearer {RESTRICTED_KEY}"}
        for name, headers in (("other", restricted), ("no/such-model", router.auth)):
            async with router.session.get(f"{url}/{name}", headers=headers) as response:
                assert response.status == 404
                error = (await response.json())["error"]
                assert error["code"] == "model_not_found"
                assert f"'{name}'" in error["message"]
        async with router.session.get(f"{url}/chat") as response:
            assert response.status == 401


async def test_request_id_kept_when_sane_and_replaced_when_not() -> None:
    """A sane client x-request-id is kept; an unsafe one is replaced by a generated id."""
    async with running_router() as router:
        response = await router.post("/v1/chat/completions", chat(), {"x-request-id": "abc-123"})
        await response.read()
        assert response.headers["x-request-id"] == "abc-123"
        response = await router.post(
            "/v1/chat/completions", chat(), {"x-request-id": "a b\tc" * 50}
        )
        await response.read()
        generated = response.headers["x-request-id"]
        assert generated != "a b\tc" * 50
        assert len(generated) == 32


async def test_weights_spread_requests_over_backends() -> None:
    """With two equal backends, both receive traffic."""
    async with running_router(mock_count=2) as router:
        for _ in range(40):
            response = await router.post("/v1/chat/completions", chat(max_tokens=1))
            assert response.status == 200
            await response.read()
        counts = [chat_requests(m) for m in router.mocks.values()]
        assert min(counts) >= 3, counts


async def test_stream_is_relayed_chunk_by_chunk() -> None:
    """The first chunk reaches the client while the backend has not yet sent its last one."""
    async with running_router() as router:
        payload = chat("[mock:chunks=5] [mock:chunk_delay_ms=300]", stream=True)
        started = time.monotonic()
        response = await router.post("/v1/chat/completions", payload)
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        first = await response.content.readuntil(b"\n\n")
        first_at = time.monotonic() - started
        assert first.startswith(b"data: {")
        assert router.mocks["m0"].stats()["streams_completed"] == 0
        rest = await response.read()
        assert rest.endswith(b"data: [DONE]\n\n")
        assert first_at < time.monotonic() - started - 0.5  # the rest took >= 4 chunk delays


async def test_stream_usage_chunk_is_relayed() -> None:
    """stream_options.include_usage yields the final usage chunk through the router."""
    async with running_router() as router:
        payload = chat(stream=True, max_tokens=3, stream_options={"include_usage": True})
        response = await router.post("/v1/chat/completions", payload)
        events = [e for e in (await response.read()).split(b"\n\n") if e]
        usage_event = msgspec.json.decode(events[-2][len(b"data: ") :])
        assert usage_event["usage"]["completion_tokens"] == 3
        assert events[-1] == b"data: [DONE]"


async def test_backend_breaking_mid_stream_ends_with_error_event() -> None:
    """A backend that dies mid-stream gives the client an OpenAI error event, not a hang."""
    async with running_router() as router:
        payload = chat("[mock:chunks=10] [mock:break_after=2]", stream=True)
        response = await router.post("/v1/chat/completions", payload)
        assert response.status == 200
        body = await asyncio.wait_for(response.read(), 5)
        events = [e for e in body.split(b"\n\n") if e]
        assert len(events) == 3
        error = msgspec.json.decode(events[-1][len(b"data: ") :])["error"]
        assert error["code"] == "upstream_stream_broken"
        assert error["type"] == "server_error"
        assert b"[DONE]" not in body


async def test_stream_exceeding_total_timeout_ends_with_timeout_event() -> None:
    """A stream running past the backend's total timeout ends with an upstream_timeout event."""
    async with running_router() as router:
        payload = chat("[mock:chunks=20] [mock:chunk_delay_ms=400]", stream=True)
        response = await router.post("/v1/chat/completions", payload)
        body = await asyncio.wait_for(response.read(), 8)
        last = [e for e in body.split(b"\n\n") if e][-1]
        assert msgspec.json.decode(last[len(b"data: ") :])["error"]["code"] == "upstream_timeout"


async def test_client_disconnect_cancels_the_upstream_stream() -> None:
    """When the client goes away mid-stream the backend sees its stream cancelled."""
    async with running_router() as router:
        payload = chat("[mock:chunks=100] [mock:chunk_delay_ms=100]", stream=True)
        response = await router.post("/v1/chat/completions", payload)
        await response.content.readuntil(b"\n\n")
        response.close()
        mock = router.mocks["m0"]
        for _ in range(100):
            if mock.stats()["streams_cancelled"] == 1:
                break
            await asyncio.sleep(0.05)
        stats = mock.stats()
        assert stats["streams_cancelled"] == 1
        assert stats["streams_completed"] == 0


async def test_metrics_count_requests() -> None:
    """Each answered request is counted by route and status."""
    async with running_router() as router:
        await (await router.post("/v1/chat/completions", chat())).read()
        await (await router.post("/v1/chat/completions", {"model": "chat"})).read()
        for _ in range(50):  # counted just after the last byte left: allow the loop a turn
            text = router.state.metrics.render().decode()
            if 'status="400"} 1.0' in text:
                break
            await asyncio.sleep(0.01)
        assert (
            'router_http_requests_total{method="POST",route="/v1/chat/completions",'
            'status="200"} 1.0' in text
        )
        assert 'status="400"} 1.0' in text
        assert "router_http_request_duration_seconds_bucket" in text


async def test_usage_is_asked_for_and_hidden_when_client_did_not() -> None:
    """A stream without include_usage still gets usage from the backend, invisible to the client."""
    async with running_router() as router:
        response = await router.post("/v1/chat/completions", chat("[mock:chunks=4]", stream=True))
        body = await response.read()
        seen = await _last_request(router)
        assert seen["body"]["stream_options"] == {"include_usage": True}  # type: ignore[index]
        events = [e for e in body.split(b"\n\n") if e]
        assert len(events) == 5  # four content chunks and [DONE]
        assert b'"usage":{' not in body
        assert events[-1] == b"data: [DONE]"
