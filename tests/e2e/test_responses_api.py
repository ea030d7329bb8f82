"""POST /v1/responses through a real router to `routerctl mock-backend`: JSON and streams,
usage records with the Responses API's token counts, the model named as asked, and the
OpenAI SDK's `client.responses.create`."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import openai
import pytest

from appliance.auth.keyring import hash_key
from tests.e2e.cli import RouterProcess, router_process
from tests.services import free_port

KEY = "rk-e2e-responses"
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _config(tmp: Path, mock_url: str) -> Path:
    path = tmp / "router.toml"
    path.write_text(
        f"""
[server]
metrics_listen = "127.0.0.1:{free_port()}"
graceful_shutdown_s = 2

[state]
dir = "{tmp / "state"}"

[usage]
sink = "none"

[[backends]]
id = "mock"
url = "{mock_url}"

[[models]]
name = "chat"
backends = [{{ backend = "mock", upstream_model = "up-model" }}]
input_price_per_1k = 1.0
output_price_per_1k = 2.0

[[orgs]]
id = "acme"

[[keys]]
id = "k"
org = "acme"
sha256 = "{hash_key(KEY)}"
"""
    )
    return path


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, mock_url: str) -> Iterator[RouterProcess]:
    tmp = tmp_path_factory.mktemp("responses")
    with router_process(["--config", str(_config(tmp, mock_url))], tmp) as running:
        yield running


@pytest.fixture
def client(router: RouterProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{router.url}/v1", api_key=KEY, max_retries=0) as sdk:
        yield sdk


def _post(router: RouterProcess, body: dict[str, object]) -> tuple[int, str, bytes]:
    """(status, x-request-id, body) of a POST /v1/responses."""
    request = urllib.request.Request(  # noqa: S310 (a loopback http URL)
        f"{router.url}/v1/responses",
        data=msgspec.json.encode(body),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with _HTTP.open(request, timeout=10) as response:
            return response.status, response.headers["x-request-id"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["x-request-id"], error.read()


def _record(router: RouterProcess, request_id: str) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 (a loopback http URL)
        f"{router.url}/v1/usage/{request_id}", headers={"Authorization": f"Bearer {KEY}"}
    )
    for _ in range(100):  # a cut stream's record is written as the request winds down
        try:
            with _HTTP.open(request, timeout=5) as response:
                record: dict[str, Any] = msgspec.json.decode(response.read())
                return record
        except urllib.error.HTTPError as error:
            if error.code != 404:
                raise
        time.sleep(0.05)
    raise AssertionError(f"no usage record for {request_id}")


def _events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each SSE event in a stream's body."""
    found = []
    for block in body.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in lines:
            found.append((lines.get("event", ""), msgspec.json.decode(lines["data"])))
    return found


def test_json_answer_names_the_model_asked_and_records_its_usage(router: RouterProcess) -> None:
    """A JSON answer says model `chat` (not the upstream name), and its usage record has the
    answer's input/output tokens as prompt/completion tokens, priced, with the upstream name."""
    status, request_id, body = _post(
        router,
        {
            "model": "chat",
            "input": "one two three",
            "instructions": "be brief",
            "max_output_tokens": 4,
        },
    )
    answer = msgspec.json.decode(body)
    assert status == 200, body
    assert (answer["object"], answer["model"]) == ("response", "chat")
    assert (answer["usage"]["input_tokens"], answer["usage"]["output_tokens"]) == (5, 4)
    record = _record(router, request_id)
    assert (record["model"], record["upstream_model"]) == ("chat", "up-model")
    assert (record["prompt_tokens"], record["completion_tokens"]) == (5, 4)
    assert (record["token_source"], record["partial"], record["stream"]) == (
        "reported",
        False,
        False,
    )
    assert record["cost_usd"] == pytest.approx((5 * 1.0 + 4 * 2.0) / 1000)


def test_stream_ends_with_completed_and_records_its_usage(router: RouterProcess) -> None:
    """A stream is relayed event by event to `response.completed`, with no `[DONE]`; every
    event's response says model `chat`; the record has the completed event's usage."""
    status, request_id, body = _post(
        router, {"model": "chat", "input": "[mock:chunks=5] hi", "stream": True}
    )
    assert status == 200, body
    events = _events(body)
    assert [name for name, _ in events][:2] == ["response.created", "response.in_progress"]
    assert events[-1][0] == "response.completed"
    assert b"[DONE]" not in body
    assert b"up-model" not in body
    carried = [data["response"]["model"] for _, data in events if "response" in data]
    assert carried == ["chat"] * 3
    deltas = [data["delta"] for name, data in events if name == "response.output_text.delta"]
    assert "".join(deltas) == "tok0 tok1 tok2 tok3 tok4"
    record = _record(router, request_id)
    assert (record["prompt_tokens"], record["completion_tokens"]) == (2, 5)
    assert (record["token_source"], record["partial"], record["error_code"]) == (
        "reported",
        False,
        None,
    )


def test_incomplete_stream_is_a_complete_relay(router: RouterProcess) -> None:
    """A stream the backend ends with `response.incomplete` (max_output_tokens reached) is
    complete: no error event, its usage recorded."""
    status, request_id, body = _post(
        router, {"model": "chat", "input": "hi", "stream": True, "max_output_tokens": 3}
    )
    assert status == 200
    assert [name for name, _ in _events(body)][-1] == "response.incomplete"
    record = _record(router, request_id)
    assert (record["completion_tokens"], record["error_code"], record["partial"]) == (
        3,
        None,
        False,
    )


def test_cut_stream_ends_with_an_error_event_and_a_partial_record(router: RouterProcess) -> None:
    """A backend dying mid-stream (before `response.completed`) ends the client's stream with
    an `error` event, and the record is partial, billed for the deltas relayed."""
    status, request_id, body = _post(
        router, {"model": "chat", "input": "[mock:chunks=9] [mock:break_after=3]", "stream": True}
    )
    assert status == 200
    name, last = _events(body)[-1]
    assert name == "error"
    assert last["code"] == last["error"]["code"] == "upstream_stream_broken"
    assert (
        last["message"]
        == last["error"]["message"]
        == "The backend stopped in the middle of the response."
    )
    record = _record(router, request_id)
    assert (record["partial"], record["error_code"]) == (True, "upstream_stream_broken")
    assert (record["completion_tokens"], record["token_source"]) == (3, "estimated")


def test_backend_verdicts_are_relayed(router: RouterProcess) -> None:
    """A backend's own 4xx on /responses (it does not serve it, or refuses the request) reaches
    the client as it answered, and bad requests are refused by the router naming the field."""
    status, _, body = _post(router, {"model": "chat", "input": "[mock:status=404]"})
    assert status == 404
    assert msgspec.json.decode(body)["error"]["type"] == "not_found_error"
    status, _, body = _post(router, {"model": "chat", "input": 5})
    assert (status, msgspec.json.decode(body)["error"]["param"]) == (400, "input")
    status, _, body = _post(router, {"model": "chat", "input": "x", "temperature": "hot"})
    assert (status, msgspec.json.decode(body)["error"]["param"]) == (400, "temperature")


def test_sdk_responses_create(client: openai.OpenAI) -> None:
    """`client.responses.create` returns the text, the usage and the model asked for."""
    response = client.responses.create(
        model="chat", input=[{"role": "user", "content": "hello there"}], max_output_tokens=6
    )
    assert response.output_text == "tok0 tok1 tok2 tok3 tok4 tok5"
    assert response.model == "chat"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (2, 6)


def test_sdk_responses_stream(client: openai.OpenAI) -> None:
    """A streamed `client.responses.create` yields the deltas and ends with the completed
    response, its usage and the model asked for."""
    events = list(client.responses.create(model="chat", input="[mock:chunks=4] hi", stream=True))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "tok0 tok1 tok2 tok3"
    last = events[-1]
    assert last.type == "response.completed"
    assert last.response.model == "chat"
    assert last.response.usage is not None
    assert last.response.usage.output_tokens == 4


def test_sdk_raises_on_a_cut_stream(client: openai.OpenAI) -> None:
    """A stream cut mid-way raises the SDK's APIError instead of ending quietly."""
    stream = client.responses.create(
        model="chat", input="[mock:chunks=9] [mock:break_after=2]", stream=True
    )
    with pytest.raises(openai.APIError, match="middle of the response"):
        list(stream)
