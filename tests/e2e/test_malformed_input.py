"""Malformed input against a real router process: a fixed-seed Hypothesis fuzz over the
inference request schema. Every answer is a 2xx or a 4xx in OpenAI's error shape; no 5xx,
no hang, and no traceback in the router's log."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.auth.keyring import hash_key
from tests.e2e.cli import RouterProcess, router_process
from tests.reliability import Figures
from tests.services import RedisServer

pytestmark = pytest.mark.services

KEY = "rk-e2e-fuzz"
LIMITED_KEY = "rk-e2e-fuzz-limited"  # an org with tpm, rpm and a budget, counted in Redis
ROUTES = ("chat/completions", "completions", "embeddings", "responses")
EXAMPLES = 200
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def config(tmp: Path, mock_url: str, redis_url: str) -> Path:
    path = tmp / "router.toml"
    path.write_text(
        f"""
[server]
metrics_listen = ""

[state]
dir = "{tmp / "state"}"
redis_url = "{redis_url}"

[telemetry]
access_log = false

[[backends]]
id = "mock"
url = "{mock_url}"

[[models]]
name = "chat"
backends = [{{ backend = "mock", upstream_model = "up-chat" }}]
input_price_per_1k = 0.5
output_price_per_1k = 1.5

[[orgs]]
id = "acme"

[[orgs]]
id = "metered"
rpm = 100000
tpm = 100000000
monthly_budget_usd = 1000000

[[keys]]
id = "k"
org = "acme"
sha256 = "{hash_key(KEY)}"

[[keys]]
id = "k-metered"
org = "metered"
sha256 = "{hash_key(LIMITED_KEY)}"
"""
    )
    return path


@pytest.fixture(scope="module")
def router(
    tmp_path_factory: pytest.TempPathFactory, mock_url: str, redis_server: RedisServer
) -> Iterator[RouterProcess]:
    """One router for the whole fuzz, in front of the module's mock backend."""
    tmp = tmp_path_factory.mktemp("fuzz")
    with router_process(["--config", str(config(tmp, mock_url, redis_server.url))], tmp) as r:
        yield r


# -- the request schema, each field valid, of a wrong type, or absent ------------------------
# Text never holds a mock directive ("[mock:status=500]" would make the backend fail).
_text = st.text(max_size=40).filter(lambda s: "[mock" not in s)
_json: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant"]), "content": _text}
)
_tokens = st.integers(1, 64) | st.sampled_from([2**31 - 1, 2**31, 2**63, 10**400])
_model = st.sampled_from(["CHAT", "../chat", "chat/../chat", "http://127.0.0.1:1/v1", "", "c\x00"])
_words = st.text(min_size=1, max_size=40).filter(lambda s: "[mock" not in s)
_INPUT: dict[str, st.SearchStrategy[Any]] = {
    "chat/completions": st.lists(_message, min_size=1, max_size=3),
    "completions": _words | st.lists(_words, min_size=1, max_size=3),
    "embeddings": _words | st.lists(_words, min_size=1, max_size=3),
    "responses": _words | st.lists(_message, min_size=1, max_size=3),
}
_REQUIRED = {"chat/completions": "messages", "completions": "prompt"}
_OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    "instructions": _text,
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "max_tokens": _tokens,
    "max_completion_tokens": _tokens,
    "max_output_tokens": _tokens,
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1),
    "n": st.integers(1, 4),
    "seed": st.integers(),
    "stop": _text | st.lists(_text, max_size=2),
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(0, 20),
    "user": _text,
}


def _field(draw: st.DrawFn, valid: st.SearchStrategy[Any], odds_valid: int) -> object:
    """A field's value: valid `odds_valid` times in 20, of any JSON type once, else absent."""
    roll = draw(st.sampled_from(range(20)))  # integers() favours the ends
    if roll == 0:
        return draw(_json)
    return draw(valid) if roll <= odds_valid else _ABSENT


_ABSENT = object()


@st.composite
def _payload(draw: st.DrawFn, route: str) -> dict[str, Any]:
    """Mostly requests a backend answers, each field now and then wrong or missing."""
    fields = {
        "model": _field(draw, st.just("chat") if draw(st.sampled_from(range(10))) else _model, 18),
        _REQUIRED.get(route, "input"): _field(draw, _INPUT[route], 18),
    }
    fields.update((name, _field(draw, valid, 3)) for name, valid in _OPTIONAL.items())
    body = {name: value for name, value in fields.items() if value is not _ABSENT}
    if isinstance(body.get("stream_options"), dict) and draw(st.booleans()):
        body["stream"] = True  # mostly with the stream it belongs to
    body.update(draw(st.dictionaries(st.text(min_size=1, max_size=12), _json, max_size=2)))
    return body


@st.composite
def _mutated(draw: st.DrawFn, raw: bytes) -> bytes:
    """The encoded body, sometimes broken at the byte level: cut short, or a byte changed."""
    kind = draw(st.sampled_from(["none"] * 8 + ["cut", "byte"]))
    if kind == "none" or not raw:
        return raw
    at = draw(st.integers(0, len(raw) - 1))
    if kind == "cut":
        return raw[:at]
    bad = draw(st.sampled_from([b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b'"', b"{", b"]"]))
    return raw[:at] + bad + raw[at + 1 :]


@dataclass(frozen=True)
class Case:
    route: str
    key: str
    body: bytes


@st.composite
def cases(draw: st.DrawFn) -> Case:
    route = draw(st.sampled_from(ROUTES))
    raw = msgspec.json.encode(draw(_payload(route)))
    return Case(route, draw(st.sampled_from([KEY, KEY, LIMITED_KEY])), draw(_mutated(raw)))


def _deep(depth: int, balanced: bool = True) -> bytes:
    inner = b"[" * depth + (b"]" * depth if balanced else b"")
    return b'{"model": "chat", "messages": ' + inner + b"}"


_CHAT = b'{"model": "chat", "messages": [{"role": "user", "content": "%s"}]%s}'
# The kinds of bad input the issue names, sent before the fuzz, and the status each gets.
# Unknown fields are relayed, not refused: backends' own extensions (vLLM's `top_k`,
# `guided_json`) travel as unknown fields, and the backend judges them.
NAMED: dict[str, tuple[bytes, int]] = {
    "invalid JSON": (_CHAT.replace(b"}]", b"]", 1) % (b"hi", b""), 400),
    "invalid UTF-8": (_CHAT % (b"\xff\xfe\xc3(", b""), 400),
    "lone surrogate": (_CHAT % (b"\\ud800", b""), 400),
    "NUL after the JSON": (_CHAT % (b"hi", b"") + b"\x00", 400),
    "NUL in the model": (b'{"model": "ch\\u0000at", "messages": [{"role": "user"}]}', 404),
    "100k-deep nesting": (_deep(100_000), 400),
    "100k unclosed brackets": (_deep(100_000, balanced=False), 400),
    "wrong types": (b'{"model": 7, "messages": {"role": null}, "stream": "yes"}', 400),
    "huge max_tokens": (_CHAT % (b"hi", b', "max_tokens": 1' + b"0" * 400), 400),
    "max_tokens past int64": (_CHAT % (b"hi", b', "max_tokens": 9223372036854775808'), 400),
    "huge float": (_CHAT % (b"hi", b', "temperature": 1e400'), 400),
    "NUL in the content": (_CHAT % (b"a\\u0000b", b', "max_tokens": 2'), 200),
    "unknown fields": (_CHAT % (b"hi", b', "api_base": "http://127.0.0.1:1", "x": [[{}]]'), 200),
}


@dataclass
class Tally:
    statuses: Counter[int]
    bad_shape: list[tuple[int, bytes]]

    def add(self, status: int, body: bytes) -> None:
        self.statuses[status] += 1

        if status >= 400 and not _openai_error(body):
            self.bad_shape.append((status, body[:200]))

    def count(self, low: int, high: int) -> int:
        return sum(n for s, n in self.statuses.items() if low <= s < high)


def _openai_error(body: bytes) -> bool:
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}


def send(router: RouterProcess, case: Case) -> tuple[int, bytes]:
    """POST the case; a hang is a failure (the timeout raises), not a status."""
    request = urllib.request.Request(  # noqa: S310 - http on loopback
        f"{router.url}/v1/{case.route}",
        data=case.body,
        method="POST",
        headers={"authorization": f"Bearer {case.key}", "content-type": "application/json"},
    )
    try:
        with _HTTP.open(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


@pytest.mark.reliability("5.1", "fuzz over the request schema (Hypothesis, fixed seed)")
def test_fuzzed_requests_get_2xx_or_an_openai_4xx(router: RouterProcess, figures: Figures) -> None:
    """Fuzzed bodies on every inference route get a 2xx or a 4xx in OpenAI's shape, never a 5xx,
    and the router logs no traceback."""
    tally = Tally(Counter(), [])

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(cases())
    def one(case: Case) -> None:
        tally.add(*send(router, case))

    named = {
        name: send(router, Case("chat/completions", KEY, body)) for name, (body, _) in NAMED.items()
    }
    for status, body in named.values():
        tally.add(status, body)
    one()
    log = router.output()
    sent = sum(tally.statuses.values())
    figures.add("examples sent", sent)
    figures.add("2xx", tally.count(200, 300))
    figures.add("4xx", tally.count(400, 500))
    figures.add("5xx", tally.count(500, 600), bound=0)
    figures.add("tracebacks in the router's log", log.count("Traceback"), bound=0)
    assert tally.count(500, 600) == 0, tally.statuses
    assert tally.bad_shape == []
    traceback = log.find("Traceback")
    assert traceback < 0, log[max(0, traceback - 1500) : traceback + 3000]
    assert {name: status for name, (status, _) in named.items()} == {
        name: status for name, (_, status) in NAMED.items()
    }
