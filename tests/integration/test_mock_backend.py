"""The mock backend over real HTTP: shapes, streams, directives, operator endpoints, the CLI."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import typer
from typer.testing import CliRunner, Result

from appliance.mock import MockBackend
from routerctl.commands.mock_backend import mock_backend

ROOT = Path(__file__).resolve().parents[2]
CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "say hello to me"}]}


def _chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": content}], **extra}


def _events(raw: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order; asserts the framing on the way."""
    assert raw.endswith("\n\n")
    blocks = raw.split("\n\n")[:-1]
    assert all(block.startswith("data: ") for block in blocks)
    return [block.removeprefix("data: ") for block in blocks]


@pytest.fixture
async def mock() -> AsyncIterator[MockBackend]:
    backend = MockBackend(models=["gpt-test", "embed-test"], name="mock-t")
    await backend.start("127.0.0.1", 0)
    try:
        yield backend
    finally:
        await backend.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def _post(
    http: aiohttp.ClientSession, url: str, body: object, **kwargs: Any
) -> tuple[int, Any]:
    async with http.post(url, json=body, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None)


async def _stats(http: aiohttp.ClientSession, mock: MockBackend) -> dict[str, Any]:
    async with http.get(f"http://127.0.0.1:{mock.port}/_mock/stats") as resp:
        result: dict[str, Any] = await resp.json()
        return result


async def _read_lines(
    http: aiohttp.ClientSession, url: str, body: object, into: list[bytes]
) -> None:
    """Stream a response line by line into `into` (so a failure keeps what arrived)."""
    async with http.post(url, json=body) as resp:
        assert resp.status == 200
        async for line in resp.content:
            into.append(line)


async def test_health_and_models(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """/health says ok and /v1/models lists the configured names in OpenAI's shape."""
    assert mock.url == f"http://127.0.0.1:{mock.port}/v1"
    async with http.get(f"http://127.0.0.1:{mock.port}/health") as resp:
        assert (resp.status, await resp.json()) == (200, {"status": "ok"})
        assert resp.headers["x-mock-backend"] == "mock-t"
    async with http.get(f"{mock.url}/models") as resp:
        doc = await resp.json()
    assert doc["object"] == "list"
    assert [(m["id"], m["object"]) for m in doc["data"]] == [
        ("gpt-test", "model"),
        ("embed-test", "model"),
    ]
    async with http.get(f"{mock.url}/models/nope") as resp:
        assert resp.status == 404


async def test_chat_completion_shape_and_usage(
    mock: MockBackend, http: aiohttp.ClientSession
) -> None:
    """A chat completion echoes the model and reports the documented token numbers."""
    status, doc = await _post(http, f"{mock.url}/chat/completions", {**CHAT, "max_tokens": 5})
    assert status == 200
    assert doc["object"] == "chat.completion"
    assert doc["id"].startswith("chatcmpl-")
    assert doc["model"] == "gpt-test"
    assert isinstance(doc["created"], int)
    assert doc["choices"][0]["message"] == {
        "role": "assistant",
        "content": "tok0 tok1 tok2 tok3 tok4",
        "refusal": None,
    }
    assert doc["choices"][0]["finish_reason"] == "length"
    assert doc["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}
    _, again = await _post(http, f"{mock.url}/chat/completions", {**CHAT, "max_tokens": 5})
    assert again["usage"] == doc["usage"]
    assert again["id"] != doc["id"]


async def test_text_completion_shape(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """/v1/completions answers a text_completion with 16 tokens by default."""
    status, doc = await _post(http, f"{mock.url}/completions", {"model": "x", "prompt": "a b"})
    assert status == 200
    assert (doc["object"], doc["model"]) == ("text_completion", "x")
    assert doc["choices"][0]["text"] == " ".join(f"tok{i}" for i in range(16))
    assert doc["choices"][0]["finish_reason"] == "stop"
    assert doc["usage"] == {"prompt_tokens": 2, "completion_tokens": 16, "total_tokens": 18}


async def test_embeddings_shape_and_determinism(
    mock: MockBackend, http: aiohttp.ClientSession
) -> None:
    """Embeddings have one deterministic vector per input; base64 decodes to the same floats."""
    url = f"{mock.url}/embeddings"
    body = {"model": "embed-test", "input": ["hello world", "bye"]}
    status, doc = await _post(http, url, body)
    assert status == 200
    assert doc["object"] == "list"
    assert doc["model"] == "embed-test"
    assert [(d["object"], d["index"], len(d["embedding"])) for d in doc["data"]] == [
        ("embedding", 0, 8),
        ("embedding", 1, 8),
    ]
    assert doc["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    _, single = await _post(http, url, {"model": "e", "input": "hello world", "dimensions": 8})
    assert single["data"][0]["embedding"] == doc["data"][0]["embedding"]
    _, wide = await _post(http, url, {"model": "e", "input": [[1, 2, 3]], "dimensions": 32})
    assert len(wide["data"][0]["embedding"]) == 32
    assert wide["usage"]["prompt_tokens"] == 3
    _, b64 = await _post(http, url, {"model": "e", "input": "bye", "encoding_format": "base64"})
    decoded = struct.unpack("<8f", base64.b64decode(b64["data"][0]["embedding"]))
    assert list(decoded) == doc["data"][1]["embedding"]


async def test_chat_stream_framing(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """A stream is one SSE event per token, role first, finish_reason last, then [DONE]."""
    async with http.post(f"{mock.url}/chat/completions", json=_chat("hi", stream=True)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = _events(await resp.text())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 16
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 15 + ["stop"]
    assert all("usage" not in c for c in chunks)
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert text == " ".join(f"tok{i}" for i in range(16))


async def test_stream_include_usage(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """include_usage adds usage: null to each chunk and a final choices-less usage chunk."""
    body = _chat("one two three", stream=True, stream_options={"include_usage": True})
    body["max_tokens"] = 4
    async with http.post(f"{mock.url}/chat/completions", json=body) as resp:
        events = _events(await resp.text())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 5
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[3]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


async def test_completion_stream_shape(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """Completions stream text_completion chunks whose texts concatenate to the reply."""
    body = {"model": "m", "prompt": "p [mock:chunks=3]", "stream": True}
    async with http.post(f"{mock.url}/completions", json=body) as resp:
        events = _events(await resp.text())
    chunks = [json.loads(e) for e in events[:-1]]
    assert events[-1] == "[DONE]"
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in chunks) == "tok0 tok1 tok2"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_stream_chunks_arrive_one_by_one(
    mock: MockBackend, http: aiohttp.ClientSession
) -> None:
    """With chunk_delay_ms each event is delivered on its own, spread over time."""
    body = _chat("x [mock:chunks=4] [mock:chunk_delay_ms=80]", stream=True)
    arrivals: list[float] = []
    async with http.post(f"{mock.url}/chat/completions", json=body) as resp:
        async for line in resp.content:
            if line.startswith(b"data: {"):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 4
    assert arrivals[-1] - arrivals[0] >= 0.2


async def test_tokens_per_s_paces_streams(http: aiohttp.ClientSession) -> None:
    """tokens_per_s spaces the chunks: 6 chunks at 50/s take at least 100 ms."""
    async with MockBackend(tokens_per_s=50) as paced:
        started = time.monotonic()
        body = _chat("x [mock:chunks=6]", stream=True)
        async with http.post(f"{paced.url}/chat/completions", json=body) as resp:
            events = _events(await resp.text())
        assert len(events) == 7
        assert time.monotonic() - started >= 0.1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": [{"role": "user", "content": "[mock:nope]"}]}, None),
    ],
)
async def test_invalid_requests_are_400(
    mock: MockBackend, http: aiohttp.ClientSession, body: dict[str, Any], param: str | None
) -> None:
    """Missing fields and unknown directives answer 400 in OpenAI's error shape."""
    status, doc = await _post(http, f"{mock.url}/chat/completions", body)
    assert status == 400
    assert doc["error"]["type"] == "invalid_request_error"
    if param is not None:
        assert doc["error"]["param"] == param
    else:
        assert "nope" in doc["error"]["message"]


async def test_bad_json_and_unknown_path(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """A non-JSON body is a 400 and an unknown path a 404, both OpenAI-shaped."""
    async with http.post(f"{mock.url}/chat/completions", data=b"{nope") as resp:
        doc = await resp.json()
        assert resp.status == 400
    assert set(doc["error"]) == {"message", "type", "param", "code"}
    async with http.get(f"{mock.url}/nothing/here") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["type"] == "not_found_error"


async def test_oversized_body_is_413(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """A body over the 16 MiB limit gets an OpenAI-shaped 413, not aiohttp's text page."""
    big = b'{"model": "m", "input": "' + b"x" * (17 * 1024 * 1024) + b'"}'
    async with http.post(f"{mock.url}/embeddings", data=io.BytesIO(big)) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("code", [429, 500, 503])
async def test_status_directive(mock: MockBackend, http: aiohttp.ClientSession, code: int) -> None:
    """[mock:status=N] answers N with an OpenAI error body (and Retry-After for 429)."""
    body = _chat(f"x [mock:status={code}]")
    async with http.post(f"{mock.url}/chat/completions", json=body) as resp:
        doc = await resp.json()
        assert resp.status == code
        assert (resp.headers.get("Retry-After") is not None) == (code == 429)
    assert f"status={code}" in doc["error"]["message"]
    embed = {"model": "e", "input": f"embed me [mock:status={code}]"}
    assert (await _post(http, f"{mock.url}/embeddings", embed))[0] == code


async def test_latency_directive_and_option(http: aiohttp.ClientSession) -> None:
    """latency_ms (directive or option) delays the answer; the directive overrides the option."""
    async with MockBackend(latency_ms=400) as slow:
        started = time.monotonic()
        status, _ = await _post(http, f"{slow.url}/chat/completions", CHAT)
        assert status == 200
        assert time.monotonic() - started >= 0.4
        started = time.monotonic()
        await _post(http, f"{slow.url}/chat/completions", _chat("x [mock:latency_ms=0]"))
        assert time.monotonic() - started < 0.3  # generous: only "not 400 ms" matters
        started = time.monotonic()
        body = {"model": "m", "prompt": "[mock:latency_ms=450]"}
        await _post(http, f"{slow.url}/completions", body)
        assert time.monotonic() - started >= 0.45


async def test_break_after_breaks_the_body(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """[mock:break_after=N] sends N chunks then drops the connection: a client payload error."""
    body = _chat("x [mock:break_after=2]", stream=True)
    received: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        await _read_lines(http, f"{mock.url}/chat/completions", body, received)
    data = [line for line in received if line.startswith(b"data: ")]
    assert len(data) == 2
    assert b"[DONE]" not in b"".join(received)
    stats = await _stats(http, mock)
    assert (stats["streams_broken"], stats["streams_completed"]) == (1, 0)


async def test_hang_is_cancellable(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """[mock:hang] never answers; the client's timeout ends it and stats count it."""
    with pytest.raises(asyncio.TimeoutError):
        await _post(
            http,
            f"{mock.url}/chat/completions",
            _chat("[mock:hang]"),
            timeout=aiohttp.ClientTimeout(total=0.3),
        )
    assert (await _stats(http, mock))["hangs"] == 1


async def test_stop_ends_a_hung_request_promptly(http: aiohttp.ClientSession) -> None:
    """stop() cancels hung requests instead of waiting for them."""
    backend = MockBackend()
    await backend.start()
    url = f"{backend.url}/chat/completions"
    pending = asyncio.ensure_future(_post(http, url, _chat("[mock:hang]")))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await backend.stop()
    assert time.monotonic() - started < 1.0
    with pytest.raises(aiohttp.ClientError):
        await pending
    assert not backend.running


async def test_garbage_directive(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """[mock:garbage] answers 200 with a body no JSON or SSE parser accepts."""
    async with http.post(f"{mock.url}/chat/completions", json=_chat("[mock:garbage]")) as resp:
        assert resp.status == 200
        raw = await resp.text()
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)
    body = _chat("[mock:garbage]", stream=True)
    async with http.post(f"{mock.url}/chat/completions", json=body) as resp:
        events = _events(await resp.text())
    with pytest.raises(json.JSONDecodeError):
        json.loads(events[0])


async def test_fail_rate_one_and_zero(http: aiohttp.ClientSession) -> None:
    """fail_rate=1 fails every inference request with a 500; fail_rate=0 never fails."""
    async with MockBackend(fail_rate=1.0) as failing, MockBackend(fail_rate=0.0) as healthy:
        for _ in range(10):
            status, doc = await _post(http, f"{failing.url}/chat/completions", CHAT)
            assert (status, doc["error"]["type"]) == (500, "server_error")
            assert (await _post(http, f"{healthy.url}/chat/completions", CHAT))[0] == 200
        assert failing.stats()["failures_injected"] == 10
        async with http.get(f"{failing.url}/models") as resp:
            assert resp.status == 200  # listing models is not inference


async def test_fail_rate_sequence_is_seeded(http: aiohttp.ClientSession) -> None:
    """Two servers with the same seed fail exactly the same requests."""
    outcomes: list[list[int]] = []
    for _ in range(2):
        async with MockBackend(fail_rate=0.5, seed=42) as backend:
            url = f"{backend.url}/completions"
            body = {"model": "m", "prompt": "p"}
            outcomes.append([(await _post(http, url, body))[0] for _ in range(20)])
    assert outcomes[0] == outcomes[1]
    assert {200, 500} == set(outcomes[0])


async def test_client_disconnect_counts_cancelled_stream(
    mock: MockBackend, http: aiohttp.ClientSession
) -> None:
    """A client that leaves mid-stream shows up as streams_cancelled."""
    body = _chat("x [mock:chunks=100] [mock:chunk_delay_ms=20]", stream=True)
    async with http.post(f"{mock.url}/chat/completions", json=body) as resp:
        assert (await resp.content.readline()).startswith(b"data: ")
        resp.close()  # drop the connection, not just this read
    deadline = time.monotonic() + 3
    stats = await _stats(http, mock)
    while stats["streams_cancelled"] == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        stats = await _stats(http, mock)
    assert stats["streams_started"] == 1
    assert stats["streams_cancelled"] == 1
    assert stats["streams_completed"] == 0


async def test_stats_counters(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """Counters track requests by route and status; operator calls are not counted."""
    await _post(http, f"{mock.url}/chat/completions", CHAT)
    async with http.post(f"{mock.url}/chat/completions", json=_chat("x", stream=True)) as resp:
        await resp.read()
    await _post(http, f"{mock.url}/embeddings", {"model": "e"})
    stats = await _stats(http, mock)
    assert stats["requests"] == 3
    assert stats["by_path"] == {"/v1/chat/completions": 2, "/v1/embeddings": 1}
    assert stats["by_status"] == {"200": 2, "400": 1}
    assert (stats["streams_started"], stats["streams_completed"]) == (1, 1)
    async with http.post(f"http://127.0.0.1:{mock.port}/_mock/reset") as resp:
        assert resp.status == 200
    assert (await _stats(http, mock))["requests"] == 0


async def test_request_log_records_headers_and_body(
    mock: MockBackend, http: aiohttp.ClientSession
) -> None:
    """/_mock/requests shows what arrived: headers as sent and the JSON body; probes excluded."""
    headers = {"Authorization": "Bearer backend-key", "X-Custom": "yes"}
    await _post(http, f"{mock.url}/chat/completions", CHAT, headers=headers)
    async with http.get(f"http://127.0.0.1:{mock.port}/health"):
        pass
    async with http.get(f"http://127.0.0.1:{mock.port}/_mock/requests") as resp:
        log = (await resp.json())["requests"]
    assert len(log) == 1
    entry = log[0]
    assert (entry["method"], entry["path"]) == ("POST", "/v1/chat/completions")
    assert entry["headers"]["Authorization"] == "Bearer backend-key"
    assert entry["headers"]["X-Custom"] == "yes"
    assert entry["body"] == CHAT
    for _ in range(60):
        async with http.get(f"{mock.url}/models"):
            pass
    assert len(mock.requests()) == 50


async def test_live_config(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """POST /_mock/config changes behaviour at once and rejects bad values."""
    config_url = f"http://127.0.0.1:{mock.port}/_mock/config"
    status, doc = await _post(http, config_url, {"fail_rate": 1})
    expected = {
        "latency_ms": 0.0,
        "fail_rate": 1,
        "tokens_per_s": 0.0,
        "fail_status": 500,
        "directives": "",
    }
    assert (status, doc) == (200, expected)
    assert (await _post(http, f"{mock.url}/chat/completions", CHAT))[0] == 500
    await _post(http, config_url, {"fail_rate": 0, "latency_ms": 120})
    started = time.monotonic()
    assert (await _post(http, f"{mock.url}/chat/completions", CHAT))[0] == 200
    assert time.monotonic() - started >= 0.12
    status, doc = await _post(http, config_url, {"fail_rate": 3})
    assert status == 400
    assert "fail_rate" in doc["error"]["message"]
    async with http.get(config_url) as resp:
        assert (await resp.json())["latency_ms"] == 120
    assert mock.configure(latency_ms=0).as_dict()["latency_ms"] == 0
    with pytest.raises(ValueError, match="tokens_per_s"):
        mock.configure(tokens_per_s=-1)


async def test_config_directives_apply_to_every_request(
    mock: MockBackend, http: aiohttp.ClientSession
) -> None:
    """Directives set in /_mock/config shape every inference request; a request's own
    directive of the same name wins."""
    config_url = f"http://127.0.0.1:{mock.port}/_mock/config"
    status, doc = await _post(http, config_url, {"directives": "[mock:status=503] [mock:chunks=2]"})
    assert (status, doc["directives"]) == (200, "[mock:status=503] [mock:chunks=2]")
    assert (await _post(http, f"{mock.url}/chat/completions", CHAT))[0] == 503
    embed = {"model": "m", "input": "a b"}
    assert (await _post(http, f"{mock.url}/embeddings", embed))[0] == 503
    status, doc = await _post(http, f"{mock.url}/chat/completions", _chat("[mock:status=200]"))
    assert status == 400  # the request's own value replaces the default, and is checked
    await _post(http, config_url, {"directives": "[mock:chunks=2]"})
    status, doc = await _post(http, f"{mock.url}/chat/completions", CHAT)
    assert (status, doc["usage"]["completion_tokens"]) == (200, 2)
    status, doc = await _post(http, f"{mock.url}/chat/completions", _chat("[mock:chunks=5] a"))
    assert doc["usage"]["completion_tokens"] == 5
    status, doc = await _post(http, config_url, {"directives": "[mock:chunks=0]"})
    assert status == 400
    assert mock.config.directives == "[mock:chunks=2]"


async def test_require_key(http: aiohttp.ClientSession) -> None:
    """With a required key, /v1 needs the right bearer token; /health stays open."""
    async with MockBackend(require_key="sk-backend") as locked:
        status, doc = await _post(http, f"{locked.url}/chat/completions", CHAT)
        assert (status, doc["error"]["code"]) == (401, "invalid_api_key")
        wrong = {"Authorization": "Bearer sk-other"}
        assert (await _post(http, f"{locked.url}/chat/completions", CHAT, headers=wrong))[0] == 401
        right = {"Authorization": "Bearer sk-backend"}
        assert (await _post(http, f"{locked.url}/chat/completions", CHAT, headers=right))[0] == 200
        async with http.get(f"http://127.0.0.1:{locked.port}/health") as resp:
            assert resp.status == 200


async def test_openai_sdk_works_against_the_mock(mock: MockBackend) -> None:
    """The official SDK parses chat, streams with usage, embeddings (base64) and model lists."""
    import openai  # noqa: PLC0415 - a 1 s import; only the worker running this test pays it

    async with openai.AsyncOpenAI(base_url=mock.url, api_key="sk-x", max_retries=0) as client:
        reply = await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "a b"}], max_tokens=2
        )
        assert reply.choices[0].message.content == "tok0 tok1"
        stream = await client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "a"}],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=3,
        )
        chunks = [chunk async for chunk in stream]
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.total_tokens == 4
        vectors = await client.embeddings.create(model="embed-test", input=["x", "y"])
        assert [len(item.embedding) for item in vectors.data] == [8, 8]
        assert [model.id async for model in client.models.list()] == ["gpt-test", "embed-test"]
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "[mock:status=429]"}]
            )


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback http
        return int(resp.status)


def test_cli_serves_until_sigterm() -> None:
    """The CLI serves on the port it prints and exits 0 on SIGTERM."""
    command = [sys.executable, "-m", "routerctl.commands.mock_backend", "--port", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            banner = proc.stdout.readline()
            found = re.search(r"http://127\.0\.0\.1:(\d+)/v1", banner)
            assert found is not None, banner
            port = int(found.group(1))
            assert _get(f"http://127.0.0.1:{port}/health") == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0


def _cli(*args: str, env: dict[str, str] | None = None) -> Result:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(mock_backend)
    return CliRunner().invoke(app, list(args), env=env)


def test_cli_reports_a_missing_key_variable() -> None:
    """A --require-key-env naming an unset variable is one readable line and exit code 2."""
    result = _cli("--require-key-env", "MOCK_TEST_UNSET_KEY", env={"MOCK_TEST_UNSET_KEY": ""})
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "routerctl: error: --require-key-env: environment variable MOCK_TEST_UNSET_KEY is not set"
    ]


@pytest.mark.parametrize(
    "args", [("--fail-rate", "2"), ("--latency-ms", "-1"), ("--port", "70000")]
)
def test_cli_rejects_bad_values(args: tuple[str, ...]) -> None:
    """Out-of-range options fail before anything listens, naming the option."""
    result = _cli(*args)
    assert result.exit_code != 0
    assert args[0] in result.output


async def test_redirect_status_directive(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """[mock:status=3xx] answers a redirect with a Location, as a misconfigured URL would."""
    body = _chat("x [mock:status=302]")
    async with http.post(f"{mock.url}/chat/completions", json=body, allow_redirects=False) as r:
        assert r.status == 302
        assert r.headers["Location"] == "/_mock/moved"


async def test_retry_after_and_fail_status(http: aiohttp.ClientSession) -> None:
    """retry_after sets a 429's Retry-After (0 drops it); fail_status sets fail_rate's status."""
    async with MockBackend(fail_rate=1.0) as failing:
        failing.configure(fail_status=429)
        url = f"{failing.url}/chat/completions"
        for content, expected in (("a", "1"), ("a [mock:retry_after=9]", "9")):
            async with http.post(url, json=_chat(content)) as resp:
                assert (resp.status, resp.headers.get("Retry-After")) == (429, expected)
        async with http.post(url, json=_chat("a [mock:retry_after=0]")) as resp:
            assert (resp.status, resp.headers.get("Retry-After")) == (429, None)


async def test_garbage_after_directive(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """[mock:garbage_after=N] streams N chunks, then a broken event and [DONE]."""
    body = _chat("x [mock:chunks=4] [mock:garbage_after=2]", stream=True)
    async with http.post(f"{mock.url}/chat/completions", json=body) as resp:
        events = _events(await resp.text())
    assert len(events) == 4
    assert [json.loads(e)["object"] for e in events[:2]] == ["chat.completion.chunk"] * 2
    with pytest.raises(json.JSONDecodeError):
        json.loads(events[2])
    assert events[3] == "[DONE]"


async def test_stall_after_directive(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """[mock:stall_after=N] streams N chunks, then sends nothing more while the client stays."""
    body = _chat("x [mock:chunks=4] [mock:stall_after=1]", stream=True)
    received: list[bytes] = []
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(
            _read_lines(http, f"{mock.url}/chat/completions", body, received), 0.5
        )
    assert len([line for line in received if line.startswith(b"data: ")]) == 1
    assert (await _stats(http, mock))["hangs"] == 1
