"""Tenancy and auth against a real router process: org isolation of usage and audit records
under fuzzed ids, viewer tokens that change nothing, and revoked keys that look unknown."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.app import build_app
from appliance.auth.keyring import hash_key
from appliance.settings.loader import load_file
from tests.e2e.cli import RouterProcess, router_process
from tests.reliability import Figures

ACME, GLOBEX = "rk-e2e-tenancy-acme", "rk-e2e-tenancy-globex"
REVOKED, GONE = "rk-e2e-tenancy-revoked", "rk-e2e-tenancy-gone"  # disabled; removed at reload
VIEWER, OPERATOR = "rka-e2e-tenancy-viewer", "rka-e2e-tenancy-operator"
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def config(tmp: Path, mock_url: str, *, gone_key: bool = True, extra_model: bool = False) -> Path:
    """Two orgs, a revoked key, and admin tokens; `gone_key` keeps the key reload removes."""
    path = tmp / "router.toml"
    gone = f'[[keys]]\nid = "k-gone"\norg = "acme"\nsha256 = "{hash_key(GONE)}"\n'
    added = '[[models]]\nname = "added"\nbackends = [{ backend = "mock" }]\n'
    path.write_text(
        f"""
[server]
metrics_listen = ""

[state]
dir = "{tmp / "state"}"

[telemetry]
access_log = false

[admin]
tokens = [
  {{ id = "watcher", sha256 = "{hash_key(VIEWER)}", role = "viewer" }},
  {{ id = "oncall", sha256 = "{hash_key(OPERATOR)}", role = "operator" }},
]

[[backends]]
id = "mock"
url = "{mock_url}"

[[models]]
name = "chat"
backends = [{{ backend = "mock" }}]

{added if extra_model else ""}

[[orgs]]
id = "acme"

[[orgs]]
id = "globex"

[[keys]]
id = "k-acme"
org = "acme"
sha256 = "{hash_key(ACME)}"

[[keys]]
id = "k-globex"
org = "globex"
sha256 = "{hash_key(GLOBEX)}"

[[keys]]
id = "k-revoked"
org = "acme"
sha256 = "{hash_key(REVOKED)}"
disabled = true

{gone if gone_key else ""}
"""
    )
    return path


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value

    def error(self) -> dict[str, object]:
        detail = self.json()["error"]
        assert isinstance(detail, dict)
        return detail


def call(
    router: RouterProcess,
    method: str,
    path: str,
    token: str | None,
    body: object = None,
    *,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(router.url_for(path), data=data, method=method)  # noqa: S310
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    if token is not None:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with _HTTP.open(request, timeout=10) as response:
            return Answer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Answer(error.code, dict(error.headers), error.read())


def chat(router: RouterProcess, key: str, request_id: str | None = None) -> Answer:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    headers = {} if request_id is None else {"x-request-id": request_id}
    return call(router, "POST", "/v1/chat/completions", key, body, headers=headers)


@pytest.fixture
def router(tmp_path: Path, mock_url: str) -> Iterator[RouterProcess]:
    with router_process(["--config", str(config(tmp_path, mock_url))], tmp_path) as r:
        yield r


# -- 6.4: an unknown key and a revoked key answer the same -----------------------------------
_VOLATILE = frozenset({"x-request-id", "date"})


def _comparable(answer: Answer, key: str) -> tuple[int, dict[str, str], bytes]:
    headers = {k.lower(): v for k, v in answer.headers.items() if k.lower() not in _VOLATILE}
    return answer.status, headers, answer.body.replace(key.encode(), b"KEY")


@pytest.mark.reliability("6.4", "an unknown key and a revoked key answer the same")
def test_revoked_and_removed_keys_answer_as_unknown_keys(
    router: RouterProcess, tmp_path: Path, mock_url: str, figures: Figures
) -> None:
    """A disabled key, and a key removed by a reload, get exactly the answer of a key that
    never existed (status, headers and body) on every route an org key calls."""
    assert chat(router, GONE).status == 200
    config(tmp_path, mock_url, gone_key=False)
    assert call(router, "POST", "/v1/admin/config/reload", OPERATOR).status == 200
    routes = [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/chat"),
        ("GET", "/v1/usage/some-id"),
    ]
    body = {"model": "chat", "input": "x"}
    differing = []
    for method, path in routes:
        unknown = "rk-e2e-tenancy-never-issued"
        answers = {
            key: _comparable(
                call(router, method, path, key, body if method == "POST" else None), key
            )
            for key in (unknown, REVOKED, GONE)
        }
        assert answers[unknown][0] == 401
        differing += [(path, key) for key, seen in answers.items() if seen != answers[unknown]]
    figures.add("routes compared", len(routes))
    figures.add("answers differing from an unknown key's", len(differing), bound=0)
    assert differing == []


# -- 6.1: org A never reads org B's usage or audit records -----------------------------------
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-"


def _ids(theirs: list[str]) -> st.SearchStrategy[str]:
    """B's ids, near misses of them (case, wildcards, traversal, injection) and random ids."""
    exact = st.sampled_from(theirs)
    near = st.tuples(exact, st.sampled_from(_NEAR)).map(lambda pair: pair[1](pair[0]))
    spliced = st.tuples(exact, st.integers(0, 40), st.sampled_from("%_*?'\"/\\.:-")).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + 1 :]
    )
    return exact | near | spliced | st.text(_ID_CHARS + "%_*/", min_size=1, max_size=40)


_NEAR = (
    str.upper,
    str.lower,
    lambda rid: rid[:-1],
    lambda rid: rid[:-1] + "%",
    lambda rid: rid[:4] + "%",
    lambda rid: "%" + rid[4:],
    lambda rid: rid[:-1] + "_",
    lambda rid: rid + "' OR '1'='1",
    lambda rid: f"../{rid}",
    lambda rid: f"x/../{rid}",
    lambda rid: urllib.parse.quote(rid + "/"),
    lambda rid: f"{rid}?org=globex",
    lambda rid: f" {rid}",
)


def _leak(answer: Answer) -> bool:
    """Whether an answer to org A shows anything of org B's."""
    if answer.status == 200:
        return answer.json().get("org") != "acme"
    return b"globex" in answer.body.replace(b"globex-", b"") or answer.status != 404


@pytest.mark.reliability("6.1", "org A reads none of org B's usage or audit records (fuzzed ids)")
def test_an_org_never_reads_another_orgs_records(router: RouterProcess, figures: Figures) -> None:
    """A key of one org gets 404 for every id of another org's records, exact or fuzzed, and
    401 for the audit log whatever its filters; the other org reads its own."""
    theirs = [f"globex-{i}-{'s' * i}ecret" for i in range(3)]
    for rid in theirs:
        assert chat(router, GLOBEX, rid).status == 200
    theirs.append(chat(router, GLOBEX).headers["x-request-id"])  # a router-made record id
    assert [call(router, "GET", f"/v1/usage/{rid}", GLOBEX).status for rid in theirs] == [200] * 4
    # A's own request under B's id: A reads its own record by it, B still its own.
    assert chat(router, ACME, theirs[0]).status == 200
    assert call(router, "GET", f"/v1/usage/{theirs[0]}", ACME).json()["org"] == "acme"
    assert call(router, "GET", f"/v1/usage/{theirs[0]}", GLOBEX).json()["org"] == "globex"
    leaks: list[tuple[str, int]] = []
    tried: list[str] = []

    @settings(max_examples=150, derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    @given(_ids(theirs))
    def one(rid: str) -> None:
        answer = call(router, "GET", "/v1/usage/" + urllib.parse.quote(rid, safe=""), ACME)
        tried.append(rid)
        if _leak(answer):
            leaks.append((rid, answer.status))

    one()
    audit = [
        call(router, "GET", f"/v1/admin/audit?{urllib.parse.urlencode(q)}", ACME)
        for q in ({}, {"org": "globex"}, {"request_id": theirs[1]}, {"kind": "limit.deny"})
    ]
    audit_reads = [a.status for a in audit if a.status != 401 or b"globex" in a.body]
    figures.add("usage ids tried", len(tried))
    figures.add("of them another org's exact ids", sum(1 for rid in tried if rid in theirs))
    figures.add("records of another org read", len(leaks), bound=0)
    figures.add("audit reads by an org key", len(audit_reads), bound=0)
    assert leaks == []
    assert audit_reads == []
    assert {a.error()["code"] for a in audit} == {"invalid_admin_token"}


# -- 6.2: viewer tokens cannot change anything -----------------------------------------------
REASON = {"reason": "tenancy test"}
# Every mutating admin route (rule, method) -> the path and body an operator would send.
CHANGES: dict[tuple[str, str], tuple[str, object]] = {
    ("POST", "/v1/admin/backends/<backend_id>/degrade"): (
        "/v1/admin/backends/mock/degrade",
        {"factor": 0.25, **REASON},
    ),
    ("POST", "/v1/admin/backends/<backend_id>/drain"): ("/v1/admin/backends/mock/drain", REASON),
    ("POST", "/v1/admin/backends/<backend_id>/restore"): (
        "/v1/admin/backends/mock/restore",
        REASON,
    ),
    ("POST", "/v1/admin/overrides"): (
        "/v1/admin/overrides",
        {"kind": "pin", "model": "chat", "backend": "mock", **REASON},
    ),
    ("DELETE", "/v1/admin/overrides/<override_id>"): ("/v1/admin/overrides/{pinned}", REASON),
    ("POST", "/v1/admin/buffer/replay"): ("/v1/admin/buffer/replay", {}),
    ("POST", "/v1/admin/config/reload"): ("/v1/admin/config/reload", None),
}
_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# What an operator's change leaves in the router's log besides state (replay, reload).
_CHANGE_LOG = ("usage_buffer_replayed", "config_reload_requested", "config_reload_refused")


def mutating_admin_routes(config_path: Path) -> set[tuple[str, str]]:
    """(method, rule) of every admin route that changes something, from the app itself."""
    app = build_app(load_file(config_path)).quart
    return {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/v1/admin/")
        for method in (rule.methods or set()) & _MUTATING
    }


def change(router: RouterProcess, route: tuple[str, str], token: str, pinned: str = "") -> Answer:
    """The request of one mutating route, as CHANGES gives it."""
    path, body = CHANGES[route]
    return call(router, route[0], path.format(pinned=pinned), token, body)


def snapshot(router: RouterProcess) -> dict[str, object]:
    """What a change would show: overrides, backends' routing state, audit log, models."""
    backends = call(router, "GET", "/v1/admin/backends", VIEWER).json()["data"]
    return {
        "overrides": call(router, "GET", "/v1/admin/overrides", VIEWER).json()["data"],
        "backends": [(b["id"], b["effective_weight"], b["override"]) for b in backends],  # type: ignore[index, union-attr, attr-defined]
        "audit": call(router, "GET", "/v1/admin/audit", VIEWER).json()["data"],
        "models": call(router, "GET", "/v1/models", ACME).json()["data"],
    }


@pytest.mark.reliability("6.2", "viewer tokens cannot change anything")
def test_a_viewer_token_changes_nothing(
    router: RouterProcess, tmp_path: Path, mock_url: str, figures: Figures
) -> None:
    """Every mutating admin route refuses a viewer with 403 insufficient_role, and afterwards
    overrides, backends, the audit log, the config and the log show no change."""
    enum_dir = tmp_path / "routes"
    enum_dir.mkdir()
    assert mutating_admin_routes(config(enum_dir, mock_url)) == set(CHANGES), (
        "a new mutating admin route: add it to CHANGES"
    )
    pinned = change(router, ("POST", "/v1/admin/overrides"), OPERATOR)
    degraded = change(router, ("POST", "/v1/admin/backends/<backend_id>/degrade"), OPERATOR)
    assert (pinned.status, degraded.status) == (200, 200)
    config(tmp_path, mock_url, extra_model=True)  # a reload would now add model "added"
    before = snapshot(router)
    answers = [change(router, route, VIEWER, pinned.json()["id"]) for route in CHANGES]
    refused = [(a.status, a.error()["code"]) == (403, "insufficient_role") for a in answers]
    after = snapshot(router)
    changed = [name for name in before if before[name] != after[name]]
    changed += [line for line in _CHANGE_LOG if line in router.output()]
    figures.add("mutating admin routes", len(CHANGES))
    figures.add("refused with 403", sum(refused), bound=len(CHANGES))
    figures.add("changes seen after", len(changed), bound=0)
    assert all(refused)
    assert changed == []
    # The same requests from an operator do show up: the snapshot can see a change.
    assert call(router, "POST", "/v1/admin/config/reload", OPERATOR).status == 200
    assert snapshot(router)["models"] != after["models"]
