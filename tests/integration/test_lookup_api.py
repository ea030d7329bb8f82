"""Audit and usage lookups over real HTTP: filters, time parsing, limits, auth and org isolation.

The lookup blueprint runs alone on a real hypercorn (edge middleware and error handlers
included) over a real SqliteAuditStore and an in-memory usage lookup.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncGenerator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from quart import Quart

from appliance.audit.events import AuditEvent
from appliance.audit.sqlite_store import SqliteAuditStore
from appliance.auth.admin import AdminTokens
from appliance.auth.keyring import hash_key
from appliance.http.context import RequestContext
from appliance.http.errors import install_error_handlers
from appliance.http.lookup import lookup_blueprint
from appliance.runtime import Runtime
from appliance.settings import AdminSettings, AdminToken, ApiKey, Org, Settings
from tests.integration.admin_harness import threaded_app
from tests.services import free_port

VIEWER_TOKEN = "rka-lookup-viewer"
OPERATOR_TOKEN = "rka-lookup-operator"
ACME_KEY, GLOBEX_KEY, OFF_KEY = "rk-lookup-acme", "rk-lookup-globex", "rk-lookup-off"
T0 = 1_795_687_200.0  # 2026-11-26T10:00:00Z
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))

SETTINGS = Settings(
    admin=AdminSettings(
        tokens=(
            AdminToken(id="watcher", sha256=hash_key(VIEWER_TOKEN), role="viewer"),
            AdminToken(id="oncall", sha256=hash_key(OPERATOR_TOKEN), role="operator"),
        )
    ),
    orgs=(Org(id="acme"), Org(id="globex"), Org(id="gone", disabled=True)),
    keys=(
        ApiKey(id="k-acme", org="acme", sha256=hash_key(ACME_KEY)),
        ApiKey(id="k-globex", org="globex", sha256=hash_key(GLOBEX_KEY)),
        ApiKey(id="k-off", org="gone", sha256=hash_key(OFF_KEY)),
    ),
)
EVENTS = (
    AuditEvent("override.create", T0, actor="oncall", subject="ov-1", reason="canary", id="e1"),
    AuditEvent("limit.deny", T0 + 60, org="acme", key_id="k-acme", request_id="req-1", id="e2"),
    AuditEvent("limit.deny", T0 + 120, org="globex", key_id="k-globex", request_id="r2", id="e3"),
    AuditEvent(
        "backend.drain",
        T0 + 180,
        actor="oncall",
        subject="gpu-a",
        reason="kernel upgrade",
        before={"health": "healthy"},
        after={"kind": "drain", "factor": 0.0},
        id="e4",
    ),
    AuditEvent("limit.deny", T0 + 240.5, org="acme", key_id="k-acme", request_id="r3", id="e5"),
    AuditEvent(
        "limit.shadow_deny", T0 + 300, org="acme", key_id="k-acme", request_id="req-1", id="e6"
    ),
)
ACME_RECORD = b'{"id":"req-acme","org":"acme","usage":{"total_tokens":12}}'
RECORDS: dict[str, tuple[str | None, bytes]] = {
    "req-acme": ("acme", ACME_RECORD),
    "req-globex": ("globex", b'{"id":"req-globex","org":"globex"}'),
    "req-no-org": (None, b'{"id":"req-no-org","org":null}'),
}


@dataclass
class LookupServer:
    url: str
    lookups: list[str] = field(default_factory=list)  # ids the usage lookup was asked for
    contexts: list[RequestContext] = field(default_factory=list)


@contextmanager
def lookup_server(
    state_dir: Path,
    events: Sequence[AuditEvent] = EVENTS,
    records: dict[str, tuple[str | None, bytes]] | None = None,
) -> Iterator[LookupServer]:
    """Serve the lookup blueprint on a free port over a SQLite audit store holding `events`."""
    port = free_port()
    server = LookupServer(f"http://127.0.0.1:{port}")
    found = RECORDS if records is None else records
    store = SqliteAuditStore(state_dir / "audit.sqlite")
    runtime = Runtime.from_settings(SETTINGS)

    async def usage_lookup(request_id: str, org: str) -> bytes | None:
        server.lookups.append(request_id)
        entry = found.get(request_id)
        return entry[1] if entry is not None and entry[0] == org else None

    app = Quart("lookup-test")
    install_error_handlers(app)
    tokens = AdminTokens(SETTINGS.admin.tokens)
    app.register_blueprint(lookup_blueprint(lambda: runtime, tokens, store, usage_lookup))

    @app.while_serving
    async def lifecycle() -> AsyncGenerator[None, None]:
        await store.open()  # the store's worker belongs to the server's loop
        for event in events:
            await store.append(event)
        yield
        await store.close()

    with threaded_app(app, server.contexts, "/v1/admin/audit", port):
        yield server


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LookupServer]:
    with lookup_server(tmp_path_factory.mktemp("lookup")) as server:
        yield server


@pytest.fixture
def server(shared_server: LookupServer) -> LookupServer:
    shared_server.lookups.clear()
    shared_server.contexts.clear()
    return shared_server


def get(
    server: LookupServer,
    path: str,
    token: str | None = VIEWER_TOKEN,
    request_id: str | None = None,
) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET with `token` as the bearer (None: no header)."""
    req = urllib.request.Request(server.url + path)  # noqa: S310 - http to our test server
    if request_id is not None:
        req.add_header("x-request-id", request_id)
    if token is not None:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with _HTTP.open(req, timeout=5) as response:
            return response.status, response.headers["content-type"], response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["content-type"], error.read()


def audit(
    server: LookupServer, params: dict[str, object], token: str | None = VIEWER_TOKEN
) -> list[str]:
    """The ids of the events `GET /v1/admin/audit?params` answers, in order (200 expected)."""
    status, _, body = get(server, f"/v1/admin/audit?{urllib.parse.urlencode(params)}", token)
    assert status == 200, body
    return [event["id"] for event in json.loads(body)["data"]]


def error(
    server: LookupServer, path: str, token: str | None = VIEWER_TOKEN
) -> tuple[int, dict[str, str]]:
    """(status, the OpenAI error object) of a failing GET."""
    status, content_type, body = get(server, path, token)
    assert content_type == "application/json"
    return status, json.loads(body)["error"]


# --- audit: filters ------------------------------------------------------------------------


def test_all_events_newest_first_in_the_documented_shape(server: LookupServer) -> None:
    """Without filters every event comes back newest first, each in the full event shape."""
    status, content_type, body = get(server, "/v1/admin/audit")
    assert (status, content_type) == (200, "application/json")
    data = json.loads(body)["data"]
    assert [e["id"] for e in data] == ["e6", "e5", "e4", "e3", "e2", "e1"]
    assert data[2] == {
        "id": "e4",
        "kind": "backend.drain",
        "time": T0 + 180,
        "time_iso": "2026-11-26T10:03:00.000Z",
        "actor": "oncall",
        "org": None,
        "key_id": None,
        "request_id": None,
        "subject": "gpu-a",
        "reason": "kernel upgrade",
        "before": {"health": "healthy"},
        "after": {"kind": "drain", "factor": 0.0},
    }
    assert data[1]["time_iso"] == "2026-11-26T10:04:00.500Z"


@pytest.mark.parametrize(
    ("params", "ids"),
    [
        ({"kind": "limit.deny"}, ["e5", "e3", "e2"]),
        ({"org": "acme"}, ["e6", "e5", "e2"]),
        ({"request_id": "req-1"}, ["e6", "e2"]),
        ({"since": T0 + 180}, ["e6", "e5", "e4"]),
        ({"until": T0 + 180}, ["e3", "e2", "e1"]),  # until is exclusive
        ({"since": int(T0 + 60), "until": int(T0 + 240)}, ["e4", "e3", "e2"]),
        ({"kind": "limit.deny", "org": "acme"}, ["e5", "e2"]),
        ({"org": "acme", "request_id": "req-1", "kind": "limit.shadow_deny"}, ["e6"]),
        ({"kind": "limit.deny", "org": "acme", "since": T0 + 100}, ["e5"]),
        ({"org": "nobody"}, []),
        ({"kind": "limit.deny", "since": T0 + 130, "until": T0 + 200}, []),
    ],
)
def test_filters_alone_and_combined(
    server: LookupServer, params: dict[str, object], ids: list[str]
) -> None:
    """Each filter narrows the result, and filters given together must all match."""
    assert audit(server, params) == ids


@pytest.mark.parametrize(
    ("since", "ids"),
    [
        ("2026-11-26T10:03:00Z", ["e6", "e5", "e4"]),
        ("2026-11-26T10:03:00+00:00", ["e6", "e5", "e4"]),
        ("2026-11-26T12:03:00+02:00", ["e6", "e5", "e4"]),
        ("2026-11-26T10:04:00.6Z", ["e6"]),
        ("2026-11-26", ["e6", "e5", "e4", "e3", "e2", "e1"]),  # a date alone is 00:00 UTC
        ("2026-11-27", []),
        (str(int(T0 + 300)), ["e6"]),
        (f"{T0 + 240.5:.1f}", ["e6", "e5"]),
    ],
)
def test_since_accepts_iso_8601_and_unix_seconds(
    server: LookupServer, since: str, ids: list[str]
) -> None:
    """`since` takes ISO-8601 with a timezone (Z or an offset), a date, or unix seconds."""
    assert audit(server, {"since": since}) == ids


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("since=yesterday", "since"),
        ("since=2026-11-26T10:00:00", "since"),  # no timezone: ambiguous
        ("since=-5", "since"),
        ("since=1e9", "since"),
        ("since=nan", "since"),
        ("since=1969-12-31T00:00:00Z", "since"),
        ("until=soon", "until"),
        ("since=2000&until=1000", "until"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=abc", "limit"),
        ("limit=1.5", "limit"),
        ("limit=-1", "limit"),
        ("limit=%D9%A1", "limit"),  # an Arabic-Indic digit one
        ("org=", "org"),
        ("org=a&org=b", "org"),
        ("orgs=acme", "orgs"),
        ("request_id=has%20space", "request_id"),
        (f"kind={'k' * 257}", "kind"),
        ("kind=limit.denied", "kind"),  # not an audit kind: an empty answer would mislead
    ],
)
def test_bad_parameters_are_400_naming_them(server: LookupServer, query: str, param: str) -> None:
    """A malformed, out-of-range, empty, repeated or unknown parameter is 400 with its name."""
    status, detail = error(server, f"/v1/admin/audit?{query}")
    assert (status, detail["code"], detail["param"]) == (400, "invalid_request", param)
    assert detail["type"] == "invalid_request_error"


@pytest.mark.parametrize(("limit", "count"), [("1", 1), ("5", 5), ("1000", 6)])
def test_limit_bounds(server: LookupServer, limit: str, count: int) -> None:
    """`limit` 1..1000 caps the answer to the newest events."""
    ids = audit(server, {"limit": limit})
    assert ids == ["e6", "e5", "e4", "e3", "e2", "e1"][:count]


# --- audit: auth ---------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, ACME_KEY, "rka-unknown"])
def test_audit_needs_an_admin_token(server: LookupServer, token: str | None) -> None:
    """No token, an org API key or an unknown token is 401, before any parameter is checked."""
    for query in ("", "?limit=0"):
        status, detail = error(server, f"/v1/admin/audit{query}", token)
        assert (status, detail["code"]) == (401, "invalid_admin_token")


@pytest.mark.parametrize(
    ("token", "actor"), [(VIEWER_TOKEN, "watcher"), (OPERATOR_TOKEN, "oncall")]
)
def test_viewer_and_operator_may_look_up(server: LookupServer, token: str, actor: str) -> None:
    """Both roles read the audit log; the access log names the admin token."""
    status, _, body = get(server, "/v1/admin/audit?limit=2", token, request_id=f"t-{actor}")
    assert (status, len(json.loads(body)["data"])) == (200, 2)
    assert logged(server, f"t-{actor}").key_id == f"admin:{actor}"


def logged(server: LookupServer, request_id: str) -> RequestContext:
    """The access-log context of request `request_id` (logged just after the reply)."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        found = [c for c in server.contexts if c.request_id == request_id]
        if found:
            return found[-1]
        time.sleep(0.01)
    raise AssertionError(f"no access log entry for {request_id}")


# --- usage records -------------------------------------------------------------------------


def test_own_usage_record_is_the_stored_bytes(server: LookupServer) -> None:
    """An org key reads its own org's record: 200, application/json, byte for byte."""
    status, content_type, body = get(server, "/v1/usage/req-acme", ACME_KEY, "t-own")
    assert (status, content_type, body) == (200, "application/json", ACME_RECORD)
    context = logged(server, "t-own")
    assert (context.org, context.key_id) == ("acme", "k-acme")


def test_other_org_and_unknown_ids_look_the_same(server: LookupServer) -> None:
    """Another org's record and an unknown id are the same 404, so ids cannot be probed."""
    other = error(server, "/v1/usage/req-globex", ACME_KEY)
    unknown = error(server, "/v1/usage/req-nowhere", ACME_KEY)
    assert other[0] == unknown[0] == 404
    assert other[1]["code"] == unknown[1]["code"] == "usage_record_not_found"
    assert other[1]["message"].replace("req-globex", "ID") == unknown[1]["message"].replace(
        "req-nowhere", "ID"
    )
    assert error(server, "/v1/usage/req-no-org", ACME_KEY)[1]["code"] == "usage_record_not_found"
    assert get(server, "/v1/usage/req-globex", GLOBEX_KEY)[0] == 200


@pytest.mark.parametrize(
    "path",
    [
        "/v1/usage/" + "a" * 129,
        "/v1/usage/has%20space",
        "/v1/usage/a/b",
        "/v1/usage/%C3%A9t%C3%A9",
        "/v1/usage/req-acme;x",
    ],
)
def test_malformed_ids_are_404_without_a_lookup(server: LookupServer, path: str) -> None:
    """An id that is not 1-128 of [A-Za-z0-9._:-] is the same 404 and never reaches the store."""
    status, detail = error(server, path, ACME_KEY)
    assert (status, detail["code"]) == (404, "usage_record_not_found")
    assert server.lookups == []


def test_control_characters_never_match_the_route(server: LookupServer) -> None:
    """An id with a newline does not even match the route: still a 404, still no lookup."""
    assert error(server, "/v1/usage/req-acme%0A", ACME_KEY)[0] == 404
    assert server.lookups == []


@pytest.mark.parametrize(
    ("token", "status", "code"),
    [
        (None, 401, "invalid_api_key"),
        ("rk-unknown", 401, "invalid_api_key"),
        (VIEWER_TOKEN, 401, "invalid_api_key"),
        (OPERATOR_TOKEN, 401, "invalid_api_key"),
        (OFF_KEY, 403, "organization_disabled"),
    ],
)
def test_usage_needs_a_live_org_key(
    server: LookupServer, token: str | None, status: int, code: str
) -> None:
    """No key, an unknown key or an admin token is 401 (a disabled org 403), before any lookup."""
    assert error(server, "/v1/usage/req-acme", token)[0] == status
    assert error(server, "/v1/usage/req-acme", token)[1]["code"] == code
    assert server.lookups == []


def test_admin_token_is_told_it_is_not_an_org_key(server: LookupServer) -> None:
    """The 401 for an admin token says why, so the caller does not retry with it."""
    assert "admin token" in error(server, "/v1/usage/req-acme", OPERATOR_TOKEN)[1]["message"]
