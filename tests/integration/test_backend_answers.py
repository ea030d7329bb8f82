"""Backend answers that are not what they claim: garbage, redirects, 429s and stalled streams."""

from __future__ import annotations

import asyncio

import msgspec

from tests.integration.router_harness import RouterUnderTest, chat, chat_requests, running_router
from tests.integration.test_usage_records import record_of

# Failures count towards ejection only after many; probes stay out of the way.
QUIET_HEALTH = """
[routing]
health_interval_s = 60
consecutive_failures = 100
"""


def events_of(body: bytes) -> list[bytes]:
    return [e for e in body.split(b"\n\n") if e]


def error_of(event: bytes) -> dict[str, object]:
    error: dict[str, object] = msgspec.json.decode(event[len(b"data: ") :])["error"]
    return error


def failures(router: RouterUnderTest, backend: str) -> int:
    return router.state.registry.get(backend).consecutive_failures


def failovers(router: RouterUnderTest, reason: str) -> float:
    text = router.state.metrics.render().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("router_failover_total{") and f'reason="{reason}"' in line
    )


async def test_garbage_json_answer_is_502_retried_and_counted() -> None:
    """A 200 whose body is not JSON is a 502 upstream_invalid_response, tried on the other
    backend first, and counts against both backends' health."""
    async with running_router(mock_count=2, extra=QUIET_HEALTH) as router:
        response = await router.post("/v1/chat/completions", chat("[mock:garbage]"))
        error = (await response.json())["error"]
        assert response.status == 502
        assert error["code"] == "upstream_invalid_response"
        assert [chat_requests(m) for m in router.mocks.values()] == [1, 1]
        assert failovers(router, "upstream_invalid_response") == 1
        assert failures(router, "m0") == failures(router, "m1") == 1


async def test_broken_first_stream_event_is_failed_over() -> None:
    """A stream whose first event is not JSON is retried elsewhere before anything reaches
    the client, and ends as a 502 when every backend does it."""
    async with running_router(mock_count=2, extra=QUIET_HEALTH) as router:
        response = await router.post("/v1/chat/completions", chat("[mock:garbage]", stream=True))
        body = await asyncio.wait_for(response.read(), 5)
        assert response.status == 502
        assert msgspec.json.decode(body)["error"]["code"] == "upstream_invalid_response"
        assert [chat_requests(m) for m in router.mocks.values()] == [1, 1]
        assert failures(router, "m0") == failures(router, "m1") == 1


async def test_broken_event_after_content_ends_the_stream_with_an_error_event() -> None:
    """A broken event after content was relayed is not forwarded: the stream ends with one
    upstream_invalid_response event, the record shows it, and the backend is charged a failure."""
    async with running_router(mock_count=1, extra=QUIET_HEALTH) as router:
        payload = chat(
            "[mock:chunks=5] [mock:garbage_after=2] [mock:chunk_delay_ms=50]", stream=True
        )
        response = await router.post("/v1/chat/completions", payload)
        body = await asyncio.wait_for(response.read(), 5)
        assert response.status == 200
        events = events_of(body)
        assert len(events) == 3
        assert all(b"mock-garbage" not in e for e in events)
        assert error_of(events[-1])["code"] == "upstream_invalid_response"
        assert b"[DONE]" not in body
        record = await record_of(router, response.headers["x-request-id"])
        assert record["error_code"] == "upstream_invalid_response"
        assert failures(router, "m0") == 1


async def test_redirect_is_502_naming_it_and_not_followed() -> None:
    """A backend's 3xx becomes a 502 upstream_redirect naming the status and target; the
    redirect is not followed."""
    async with running_router(mock_count=1, extra=QUIET_HEALTH) as router:
        response = await router.post("/v1/chat/completions", chat("[mock:status=302]"))
        error = (await response.json())["error"]
        assert response.status == 502
        assert error["code"] == "upstream_redirect"
        assert "302" in error["message"]
        assert "/_mock/moved" in error["message"]
        assert response.headers["x-routerctl-upstream-status"] == "302"
        assert [r["path"] for r in router.mocks["m0"].requests()] == ["/v1/chat/completions"]
        assert failures(router, "m0") == 1


async def test_router_errors_from_a_backend_status_carry_that_status() -> None:
    """A 5xx answered as 502 upstream_error names the backend's status in a header too."""
    async with running_router(mock_count=1, extra=QUIET_HEALTH) as router:
        response = await router.post("/v1/chat/completions", chat("[mock:status=503]"))
        assert response.status == 502
        assert (await response.json())["error"]["code"] == "upstream_error"
        assert response.headers["x-routerctl-upstream-status"] == "503"


async def test_backend_429_is_retried_on_a_peer() -> None:
    """A backend answering 429 is failed over to a healthy peer: the client never sees it."""
    async with running_router(mock_count=2, extra=QUIET_HEALTH) as router:
        limited = router.mocks["m0"]
        limited.configure(fail_rate=1.0, fail_status=429)
        statuses = []
        for _ in range(40):  # until the weighted pick has tried the limited backend
            response = await router.post("/v1/chat/completions", chat("[mock:retry_after=0]"))
            await response.read()
            statuses.append(response.status)
            if chat_requests(limited):
                break
        assert chat_requests(limited) == 1
        assert set(statuses) == {200}
        assert failovers(router, "upstream_rate_limited") == 1
        assert failures(router, "m0") == 0  # busy is not broken


async def test_relayed_backend_429_is_marked_as_the_backends() -> None:
    """With no peer left, a backend's 429 reaches the client marked as the backend's (code and
    header), never as the router's own rate limit, with the backend's Retry-After."""
    async with running_router(mock_count=1, extra=QUIET_HEALTH) as router:
        response = await router.post(
            "/v1/chat/completions", chat("[mock:status=429] [mock:retry_after=7]")
        )
        error = (await response.json())["error"]
        assert response.status == 429
        assert error["code"] == "upstream_rate_limited"
        assert response.headers["x-routerctl-upstream-status"] == "429"
        assert response.headers["retry-after"] == "7"


async def test_backend_429_with_retry_after_is_skipped_until_then() -> None:
    """After a backend's 429 with Retry-After, new requests go to its peer while it rests."""
    async with running_router(mock_count=2, extra=QUIET_HEALTH) as router:
        limited = router.mocks["m0"]
        limited.configure(fail_rate=1.0, fail_status=429)
        payload = chat("[mock:retry_after=60]")
        for _ in range(40):
            await (await router.post("/v1/chat/completions", payload)).read()
            if chat_requests(limited):
                break
        assert chat_requests(limited) == 1
        for _ in range(20):
            response = await router.post("/v1/chat/completions", payload)
            await response.read()
            assert response.status == 200
        assert chat_requests(limited) == 1


IDLE = "stream_idle_timeout_s = 0.3\n"


async def test_stalled_stream_ends_at_the_idle_timeout() -> None:
    """A stream whose backend goes silent mid-way ends after stream_idle_timeout_s (not the
    total timeout) with an upstream_stream_idle_timeout event, charged to the backend."""
    async with running_router(mock_count=1, extra=QUIET_HEALTH, backend_extra=IDLE) as router:
        payload = chat("[mock:chunks=5] [mock:stall_after=2]", stream=True)
        response = await router.post("/v1/chat/completions", payload)
        body = await asyncio.wait_for(response.read(), 5)
        events = events_of(body)
        assert len(events) == 3
        assert error_of(events[-1])["code"] == "upstream_stream_idle_timeout"  # not the total
        record = await record_of(router, response.headers["x-request-id"])
        assert record["error_code"] == "upstream_stream_idle_timeout"
        assert failures(router, "m0") == 1
        for _ in range(50):  # the backend sees its stream cancelled
            if router.mocks["m0"].stats()["streams_cancelled"] == 1:
                break
            await asyncio.sleep(0.05)
        assert router.mocks["m0"].stats()["streams_cancelled"] == 1


async def test_stream_silent_before_its_first_event_is_failed_over() -> None:
    """A stream with headers but no event within the idle timeout is retried elsewhere and
    ends as a 504 upstream_stream_idle_timeout when every backend is silent."""
    async with running_router(mock_count=2, extra=QUIET_HEALTH, backend_extra=IDLE) as router:
        payload = chat("[mock:stall_after=0]", stream=True)
        response = await router.post("/v1/chat/completions", payload)
        body = await asyncio.wait_for(response.read(), 5)
        assert response.status == 504
        assert msgspec.json.decode(body)["error"]["code"] == "upstream_stream_idle_timeout"
        assert [chat_requests(m) for m in router.mocks.values()] == [1, 1]


async def test_slow_but_steady_stream_is_not_cut() -> None:
    """Chunks arriving within the idle timeout of each other keep a stream going."""
    async with running_router(mock_count=1, extra=QUIET_HEALTH, backend_extra=IDLE) as router:
        payload = chat("[mock:chunks=6] [mock:chunk_delay_ms=100]", stream=True)
        response = await router.post("/v1/chat/completions", payload)
        body = await asyncio.wait_for(response.read(), 5)
        assert events_of(body)[-1] == b"data: [DONE]"
        assert len(events_of(body)) == 7
