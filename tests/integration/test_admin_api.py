"""The admin API over real HTTP: auth matrix, strict bodies, 404 mapping and exact JSON shapes."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.integration.admin_harness import (
    NOW,
    OPERATOR_TOKEN,
    ORG_KEY,
    VIEWER_TOKEN,
    AdminServer,
    admin_server,
)

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
REASON = {"reason": "incident 42"}

Route = tuple[str, str, object, str]  # method, path, a valid body, the role it needs
ROUTES: list[Route] = [
    ("GET", "/v1/admin/backends", None, "viewer"),
    ("GET", "/v1/admin/overrides", None, "viewer"),
    ("POST", "/v1/admin/backends/gpu-a/degrade", {"weight": 0.5, **REASON}, "operator"),
    ("POST", "/v1/admin/backends/gpu-a/drain", {**REASON, "ttl_s": 60}, "operator"),
    ("POST", "/v1/admin/backends/gpu-a/restore", REASON, "operator"),
    (
        "POST",
        "/v1/admin/overrides",
        {"kind": "pin", "model": "chat", "backend": "gpu-a", **REASON},
        "operator",
    ),
    ("DELETE", "/v1/admin/overrides/ov-1", REASON, "operator"),
]
ROUTE_IDS = [f"{m} {p}" for m, p, _, _ in ROUTES]


@pytest.fixture(scope="module")
def shared_server() -> Iterator[AdminServer]:
    with admin_server() as server:
        yield server


@pytest.fixture
def server(shared_server: AdminServer) -> AdminServer:
    """The module's server with the fake control back in its initial state."""
    shared_server.control.reset()
    shared_server.contexts.clear()
    return shared_server


def call(
    server: AdminServer,
    method: str,
    path: str,
    body: object = None,
    *,
    token: str | None = OPERATOR_TOKEN,
    raw: bytes | None = None,
    authorization: str | None = None,
) -> tuple[int, dict[str, object]]:
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server.url + path, data=data, method=method)  # noqa: S310 - http
    if authorization is not None:
        req.add_header("authorization", authorization)
    elif token is not None:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with _HTTP.open(req, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def logged_key_id(server: AdminServer, method: str, path: str) -> str | None:
    """The key id the access log got for the last such request (logged just after the reply)."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        found = [c for c in server.contexts if (c.method, c.path) == (method, path)]
        if found:
            return found[-1].key_id
        time.sleep(0.01)
    return None


def error_of(payload: dict[str, object]) -> dict[str, object]:
    detail = payload["error"]
    assert isinstance(detail, dict)
    return detail


def override(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": "ov-1",
        "kind": "degrade",
        "backend": "gpu-a",
        "model": None,
        "factor": 0.5,
        "reason": "incident 42",
        "actor": "oncall",
        "created_at": NOW,
        "expires_at": None,
    }
    return {**base, **fields}


# --- auth matrix ---------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_no_token_is_401(server: AdminServer, route: Route) -> None:
    """Every admin route answers 401 invalid_admin_token without a bearer token."""
    method, path, body, _ = route
    status, payload = call(server, method, path, body, token=None)
    assert (status, error_of(payload)["code"]) == (401, "invalid_admin_token")
    assert server.control.calls == []


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize(
    "authorization", [f"Bearer {ORG_KEY}", "Bearer rka-unknown", f"Basic {OPERATOR_TOKEN}"]
)
def test_org_key_unknown_or_malformed_is_401(
    server: AdminServer, route: Route, authorization: str
) -> None:
    """An org API key, an unknown token or a non-bearer header never opens an admin route."""
    method, path, body, _ = route
    status, payload = call(server, method, path, body, authorization=authorization)
    assert (status, error_of(payload)["code"]) == (401, "invalid_admin_token")
    assert server.control.calls == []


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_viewer_reads_but_cannot_change(server: AdminServer, route: Route) -> None:
    """A viewer token may read (200) and gets 403 insufficient_role on every change."""
    method, path, body, need = route
    status, payload = call(server, method, path, body, token=VIEWER_TOKEN)
    if need == "viewer":
        assert status == 200
    else:
        assert (status, error_of(payload)["code"]) == (403, "insufficient_role")
        assert server.control.calls == []


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_operator_may_do_everything(server: AdminServer, route: Route) -> None:
    """An operator token gets 200 on every route, and changes carry its id as the actor."""
    method, path, body, _ = route
    status, _ = call(server, method, path, body)
    assert status == 200
    assert all("oncall" in c for c in server.control.calls)
    assert logged_key_id(server, method, path) == "admin:oncall"


def test_org_key_message_says_it_is_not_an_admin_token(server: AdminServer) -> None:
    """An org key is told apart from a typo: the message says admin routes need an admin token."""
    _, payload = call(server, "GET", "/v1/admin/backends", token=ORG_KEY)
    assert "org API key" in str(error_of(payload)["message"])
    assert ORG_KEY not in json.dumps(payload)


def test_auth_is_checked_before_the_body(server: AdminServer) -> None:
    """A bad body from a caller without a token is 401, not 400: nothing is parsed first."""
    status, _ = call(server, "POST", "/v1/admin/backends/gpu-a/degrade", raw=b"{", token=None)
    assert status == 401


# --- request bodies ------------------------------------------------------------------------

DEGRADE = "/v1/admin/backends/gpu-a/degrade"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"reason": "x"}, "factor"),
        ({"weight": 0.5}, "reason"),
        ({"factor": 0, "reason": "x"}, "factor"),
        ({"factor": 1, "reason": "x"}, "factor"),
        ({"weight": 0.5, "reason": ""}, "reason"),
        ({"weight": 0.5, "reason": "   "}, "reason"),
        ({"weight": 0.5, "reason": 7}, "reason"),
        ({"weight": 0, "reason": "x"}, "weight"),
        ({"weight": 1, "reason": "x"}, "weight"),
        ({"weight": 1.5, "reason": "x"}, "weight"),
        ({"weight": "0.5", "reason": "x"}, "weight"),
        ({"weight": True, "reason": "x"}, "weight"),
        ({"weight": 0.5, "reason": "x", "ttl_s": 0}, "ttl_s"),
        ({"weight": 0.5, "reason": "x", "ttl_s": -5}, "ttl_s"),
        ({"weight": 0.5, "reason": "x", "ttl_s": "1h"}, "ttl_s"),
        ({"weight": 0.5, "reason": "x", "ttl_s": 10**9}, "ttl_s"),
        ({"weight": 0.5, "reason": "x", "factor": 0.5}, "factor"),
        ({"weight": 0.5, "reason": "x" * 1001}, "reason"),
    ],
)
def test_degrade_body_errors_name_the_field(
    server: AdminServer, body: dict[str, object], param: str
) -> None:
    """A missing, mistyped, out-of-range or unknown field is a 400 whose param names it."""
    status, payload = call(server, "POST", DEGRADE, body)
    error = error_of(payload)
    assert (status, error["code"], error["param"]) == (400, "invalid_request", param)
    assert server.control.calls == []


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/admin/backends/gpu-a/drain", {"reason": "x", "weight": 0.5}, "weight"),
        ("/v1/admin/backends/gpu-a/drain", {}, "reason"),
        ("/v1/admin/backends/gpu-a/restore", {"reason": "x", "ttl_s": 5}, "ttl_s"),
        ("/v1/admin/backends/gpu-a/restore", {"reason": ""}, "reason"),
        ("/v1/admin/overrides", {"kind": "pin", "model": "chat", "reason": "x"}, "backend"),
        ("/v1/admin/overrides", {"model": "chat", "backend": "gpu-a", "reason": "x"}, "kind"),
        (
            "/v1/admin/overrides",
            {"kind": "degrade", "model": "chat", "backend": "gpu-a", "reason": "x"},
            "kind",
        ),
        (
            "/v1/admin/overrides",
            {"kind": "pin", "model": "", "backend": "gpu-a", "reason": "x"},
            "model",
        ),
    ],
)
def test_other_bodies_are_strict_too(
    server: AdminServer, path: str, body: dict[str, object], param: str
) -> None:
    """Drain, restore and pin bodies are checked the same way, and pin is the only kind here."""
    status, payload = call(server, "POST", path, body)
    assert (status, error_of(payload)["param"]) == (400, param)
    assert server.control.calls == []


@pytest.mark.parametrize(
    ("raw", "code"),
    [(b"{", "invalid_json"), (b"not json", "invalid_json"), (b"[1]", "invalid_request")],
)
def test_unparsable_or_non_object_body_is_400(server: AdminServer, raw: bytes, code: str) -> None:
    """Broken JSON is 400 invalid_json and a non-object body is 400 invalid_request."""
    status, payload = call(server, "POST", DEGRADE, raw=raw)
    assert (status, error_of(payload)["code"]) == (400, code)


def test_clear_needs_a_reason_from_body_or_query(server: AdminServer) -> None:
    """DELETE without a reason is 400; `?reason=` serves clients that cannot send a body."""
    status, payload = call(server, "DELETE", "/v1/admin/overrides/ov-1")
    assert (status, error_of(payload)["param"]) == (400, "reason")
    status, payload = call(server, "DELETE", "/v1/admin/overrides/ov-1?reason=done%20now")
    assert (status, payload["reason"], payload["id"]) == (200, "seeded", "ov-1")
    assert server.control.calls == [("clear", "ov-1", "done now", "oncall")]


# --- 404s ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "code"),
    [
        ("POST", "/v1/admin/backends/nope/degrade", {"weight": 0.5, **REASON}, "backend_not_found"),
        ("POST", "/v1/admin/backends/nope/drain", REASON, "backend_not_found"),
        ("POST", "/v1/admin/backends/nope/restore", REASON, "backend_not_found"),
        (
            "POST",
            "/v1/admin/overrides",
            {"kind": "pin", "model": "chat", "backend": "nope", **REASON},
            "backend_not_found",
        ),
        (
            "POST",
            "/v1/admin/overrides",
            {"kind": "pin", "model": "nope", "backend": "gpu-a", **REASON},
            "model_not_found",
        ),
        ("DELETE", "/v1/admin/overrides/ov-404", REASON, "override_not_found"),
        ("GET", "/v1/admin/nothing-here", None, "not_found"),
    ],
)
def test_unknown_targets_are_404_with_the_controls_message(
    server: AdminServer, method: str, path: str, body: object, code: str
) -> None:
    """The control's not-found errors come back as 404 with their code and message."""
    status, payload = call(server, method, path, body)
    error = error_of(payload)
    assert (status, error["code"]) == (404, code)
    assert error["message"]


def test_wrong_method_is_405(server: AdminServer) -> None:
    """A GET on a change route is 405 in the error shape."""
    status, payload = call(server, "GET", DEGRADE)
    assert (status, error_of(payload)["code"]) == (405, "method_not_allowed")


# --- shapes --------------------------------------------------------------------------------


def test_backends_shape(server: AdminServer) -> None:
    """GET backends lists every backend with its live state and override, exactly so."""
    call(server, "POST", DEGRADE, {"weight": 0.25, "reason": "slow", "ttl_s": 900})
    status, payload = call(server, "GET", "/v1/admin/backends", token=VIEWER_TOKEN)
    assert status == 200
    assert payload == {
        "data": [
            {
                "id": "gpu-a",
                "models": ["chat", "embed"],
                "weight": 2.0,
                "effective_weight": 0.5,
                "health": "healthy",
                "inflight": 3,
                "max_concurrency": 8,
                "ewma_latency_ms": 123.4,
                "ejections": 0,
                "override": override(id="ov-2", factor=0.25, reason="slow", expires_at=NOW + 900),
            },
            {
                "id": "gpu-b",
                "models": ["chat"],
                "weight": 1.0,
                "effective_weight": 1.0,
                "health": "ejected",
                "inflight": 0,
                "max_concurrency": 0,
                "ewma_latency_ms": None,
                "ejections": 2,
                "override": None,
            },
        ]
    }


def test_degrade_drain_restore_shapes(server: AdminServer) -> None:
    """Degrade and drain return the created override; restore returns what it removed."""
    status, made = call(server, "POST", DEGRADE, {"factor": 0.5, **REASON, "ttl_s": None})
    assert (status, made) == (200, override(id="ov-2"))
    assert server.control.calls[-1] == ("degrade", "gpu-a", "0.5", "incident 42", "oncall", "None")
    status, drained = call(
        server, "POST", "/v1/admin/backends/gpu-a/drain", {**REASON, "ttl_s": 60}
    )
    assert (status, drained) == (
        200,
        override(id="ov-3", kind="drain", factor=0.0, expires_at=NOW + 60),
    )
    status, removed = call(server, "POST", "/v1/admin/backends/gpu-a/restore", REASON)
    assert (status, removed) == (200, {"removed": [made, drained]})


def test_degrade_takes_weight_as_the_factors_older_name(server: AdminServer) -> None:
    """`weight` alone still sets the factor, as clients written before `factor` send it."""
    status, _ = call(server, "POST", DEGRADE, {"weight": 0.25, **REASON})
    assert status == 200
    assert server.control.calls[-1][:3] == ("degrade", "gpu-a", "0.25")


def test_overrides_pin_and_clear_shapes(server: AdminServer) -> None:
    """Pin returns the override, list shows it, delete returns the removed one."""
    body = {"kind": "pin", "model": "chat", "backend": "gpu-a", "reason": "canary", "ttl_s": 30.5}
    status, pinned = call(server, "POST", "/v1/admin/overrides", body)
    expected = override(
        id="ov-2", kind="pin", model="chat", factor=1.0, reason="canary", expires_at=NOW + 30.5
    )
    assert (status, pinned) == (200, expected)
    seeded = override(
        id="ov-1",
        kind="pin",
        backend="gpu-b",
        model="chat",
        factor=1.0,
        reason="seeded",
        actor="setup",
    )
    status, listed = call(server, "GET", "/v1/admin/overrides", token=VIEWER_TOKEN)
    assert (status, listed) == (200, {"data": [seeded, expected]})
    status, cleared = call(server, "DELETE", "/v1/admin/overrides/ov-2", {"reason": "done"})
    assert (status, cleared) == (200, expected)
    assert server.control.calls[-1] == ("clear", "ov-2", "done", "oncall")


def test_responses_carry_request_id_and_json_type(server: AdminServer) -> None:
    """Admin answers are JSON and carry x-request-id like every other route."""
    req = urllib.request.Request(server.url + "/v1/admin/overrides")  # noqa: S310 - http
    req.add_header("authorization", f"Bearer {VIEWER_TOKEN}")
    req.add_header("x-request-id", "admin-test-1")
    with _HTTP.open(req, timeout=5) as response:
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-request-id"] == "admin-test-1"
