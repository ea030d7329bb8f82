"""`routerctl audit lookup` as operators run it, against the lookup API over real HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from appliance.audit.events import AuditEvent
from routerctl.main import app as main_app
from tests.e2e.cli import routerctl_command
from tests.integration.test_lookup_api import (
    ACME_KEY,
    OPERATOR_TOKEN,
    VIEWER_TOKEN,
    LookupServer,
    lookup_server,
)
from tests.services import free_port

NOW = time.time()
EVENTS = (
    AuditEvent("override.create", NOW - 7200, actor="oncall", subject="ov-1", reason="canary"),
    AuditEvent(
        "limit.deny", NOW - 1800, org="acme", key_id="k-acme", request_id="req-1", subject="rpm"
    ),
    AuditEvent("backend.drain", NOW - 60, actor="oncall", subject="gpu-a", reason="kernel upgrade"),
)
HEADER = ["TIME", "KIND", "ACTOR", "ORG", "KEY", "REQUEST", "SUBJECT", "REASON"]


def audit_command() -> list[str]:
    """`routerctl audit` once main.py registers the group; the module's own runner until then."""
    if any(group.name == "audit" for group in main_app.registered_groups):
        return [*routerctl_command(), "audit"]
    return [sys.executable, "-m", "routerctl.commands.audit"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LookupServer]:
    with lookup_server(tmp_path_factory.mktemp("audit-cli"), EVENTS) as running:
        yield running


def lookup(
    server: LookupServer | None, *args: str, token: str | None = VIEWER_TOKEN
) -> subprocess.CompletedProcess[str]:
    """Run `audit lookup ARGS` with ROUTERCTL_URL/ROUTERCTL_TOKEN for `server` (none inherited)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTERCTL_") and k != "COLUMNS"}
    if server is not None:
        env["ROUTERCTL_URL"] = server.url
    if token is not None:
        env["ROUTERCTL_TOKEN"] = token
    return subprocess.run(
        [*audit_command(), "lookup", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
        cwd=Path(__file__).parents[2],
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("routerctl: error: ")
    return lines[0]


def utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_table_newest_first(server: LookupServer) -> None:
    """The table has one row per event, newest first, with '-' for what an event lacks."""
    result = lookup(server)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == HEADER
    assert [row.split() for row in rows] == [
        [utc(NOW - 60), "backend.drain", "oncall", "-", "-", "-", "gpu-a", "kernel", "upgrade"],
        [utc(NOW - 1800), "limit.deny", "-", "acme", "k-acme", "req-1", "rpm", "-"],
        [utc(NOW - 7200), "override.create", "oncall", "-", "-", "-", "ov-1", "canary"],
    ]
    assert result.stderr == ""


def test_json_is_the_api_shape(server: LookupServer) -> None:
    """--json prints {"data": [...]} with every field of the API's event shape."""
    result = lookup(server, "--json", "--kind", "limit.deny", token=OPERATOR_TOKEN)
    assert result.returncode == 0, result.stderr
    (event,) = json.loads(result.stdout)["data"]
    assert {k: v for k, v in event.items() if k not in ("id", "time", "time_iso")} == {
        "kind": "limit.deny",
        "actor": None,
        "org": "acme",
        "key_id": "k-acme",
        "request_id": "req-1",
        "subject": "rpm",
        "reason": None,
        "before": None,
        "after": None,
    }
    assert event["time"] == pytest.approx(NOW - 1800)
    assert event["time_iso"].endswith("Z")


@pytest.mark.parametrize(
    ("args", "kinds"),
    [
        (("--since", "15m"), ["backend.drain"]),
        (("--since", "1h"), ["backend.drain", "limit.deny"]),
        (("--since", "3h", "--until", "15m"), ["limit.deny", "override.create"]),
        (("--since", "1d", "--org", "acme"), ["limit.deny"]),
        (("--request-id", "req-1"), ["limit.deny"]),
        (("--since", utc(NOW - 3600)), ["backend.drain", "limit.deny"]),
        (("--until", str(int(NOW - 3600))), ["override.create"]),
    ],
)
def test_filters_and_relative_times(
    server: LookupServer, args: tuple[str, ...], kinds: list[str]
) -> None:
    """--since/--until take '15m'-style durations ago, ISO-8601 or unix seconds, with filters."""
    result = lookup(server, *args, "--json")
    assert result.returncode == 0, result.stderr
    assert [e["kind"] for e in json.loads(result.stdout)["data"]] == kinds


def test_no_match_says_so(server: LookupServer) -> None:
    """An empty result is a sentence, not an empty table."""
    result = lookup(server, "--org", "nobody")
    assert (result.returncode, result.stdout) == (0, "no audit events match\n")


def test_a_full_page_hints_at_more(server: LookupServer) -> None:
    """When --limit is reached, stderr says there may be more; stdout is only the table."""
    result = lookup(server, "--limit", "2")
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 3
    assert "newest 2" in result.stderr


def test_unreachable_router() -> None:
    """No router at the URL: exit 1 and one line saying the connection was refused."""
    url = f"http://127.0.0.1:{free_port()}"
    result = lookup(None, "--url", url)
    assert result.returncode == 1
    assert (
        one_error_line(result)
        == f"routerctl: error: cannot reach router at {url}: connection refused"
    )
    assert result.stdout == ""


@pytest.mark.parametrize("token", ["rka-not-a-real-token", ACME_KEY])
def test_bad_token(server: LookupServer, token: str) -> None:
    """An unknown admin token or an org key: exit 1 and one 'admin token rejected' line."""
    result = lookup(server, token=token)
    assert result.returncode == 1
    assert one_error_line(result).startswith("routerctl: error: admin token rejected: ")


def test_missing_token(server: LookupServer) -> None:
    """Without ROUTERCTL_TOKEN nothing is sent and the line says what to export."""
    result = lookup(server, token=None)
    assert result.returncode == 1
    assert "ROUTERCTL_TOKEN is not set" in one_error_line(result)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--since", "yesterday"), "--since: invalid time 'yesterday'"),
        (("--until", "2026-11-26T10:00"), "--until: time '2026-11-26T10:00' has no timezone"),
        (("--since", "1h", "--until", "2h"), "--until: it is before --since"),
    ],
)
def test_bad_times_exit_2_before_sending(args: tuple[str, ...], fragment: str) -> None:
    """A time that does not parse is one line and exit 2, and no request is made."""
    result = lookup(None, *args, "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert fragment in one_error_line(result)


@pytest.mark.parametrize("limit", ["0", "1001"])
def test_limit_out_of_range_is_a_usage_error(limit: str) -> None:
    """--limit outside 1..1000 is typer's usage error, exit 2."""
    assert lookup(None, "--limit", limit).returncode == 2
