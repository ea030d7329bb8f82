"""`routerctl backend` / `override` / `keys create-admin` as operators run them, over real HTTP."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import tomllib
from collections.abc import Iterator

import pytest

from appliance.auth.keyring import hash_key
from routerctl.admin_client import AdminClient, AdminError
from tests.e2e.cli import routerctl_command
from tests.integration.admin_harness import (
    OPERATOR_TOKEN,
    ORG_KEY,
    VIEWER_TOKEN,
    AdminServer,
    admin_server,
)
from tests.services import free_port


@pytest.fixture(scope="module")
def shared_server() -> Iterator[AdminServer]:
    with admin_server() as server:
        yield server


@pytest.fixture
def server(shared_server: AdminServer) -> AdminServer:
    """The module's server, its fake control reset and on the real clock (for 'expires in')."""
    shared_server.control.reset(now=time.time())
    return shared_server


def cli(
    server: AdminServer | None,
    *args: str,
    token: str | None = OPERATOR_TOKEN,
    url_env: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run routerctl with ROUTERCTL_URL/ROUTERCTL_TOKEN set for `server` (none inherited)."""
    # No COLUMNS either: piped output must keep whole rows whatever the terminal was.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTERCTL_") and k != "COLUMNS"}
    url = url_env or (server.url if server is not None else None)
    if url is not None:
        env["ROUTERCTL_URL"] = url
    if token is not None:
        env["ROUTERCTL_TOKEN"] = token
    return subprocess.run(
        [*routerctl_command(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command, checked to be exactly one line."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("routerctl: error: ")
    return lines[0]


# --- happy paths ---------------------------------------------------------------------------


def test_backend_list_table(server: AdminServer) -> None:
    """`backend list` prints a table with health, weights, load, latency, override and models."""
    result = cli(server, "backend", "list")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "ID", "HEALTH", "WEIGHT", "EFFECTIVE", "INFLIGHT", "LATENCY", "ms", "OVERRIDE", "MODELS",
    ]  # fmt: skip
    assert rows[0].split() == ["gpu-a", "healthy", "2", "2", "3/8", "123", "-", "chat,", "embed"]
    assert rows[1].split() == ["gpu-b", "ejected", "1", "1", "0", "-", "-", "chat"]


def test_backend_list_json(server: AdminServer) -> None:
    """`backend list --json` prints the admin API's own shape."""
    result = cli(server, "backend", "list", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)["data"]
    assert [b["id"] for b in data] == ["gpu-a", "gpu-b"]
    assert data[0]["max_concurrency"] == 8
    assert data[1]["ewma_latency_ms"] is None
    assert data[1]["override"] is None


def test_degrade_then_list_shows_the_override(server: AdminServer) -> None:
    """`backend degrade` sends weight, reason and TTL; list then shows the degrade and expiry."""
    args = ("gpu-a", "--weight", "0.5", "--reason", "slow", "--ttl", "15m")
    result = cli(server, "backend", "degrade", *args)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        r"backend gpu-a degraded to x0\.5, expires in 1[45]m( \d+s)? \(override ov-2\)\n",
        result.stdout,
    )
    assert server.control.calls == [("degrade", "gpu-a", "0.5", "slow", "oncall", "900.0")]
    listed = cli(server, "backend", "list").stdout.splitlines()[1]
    assert re.search(r"gpu-a\s+healthy\s+2\s+1\s+3/8\s+123\s+degrade x0\.5, expires in 1", listed)


def test_drain_json(server: AdminServer) -> None:
    """`backend drain --json` prints the created override."""
    result = cli(server, "backend", "drain", "gpu-b", "--reason", "maintenance", "--json")
    assert result.returncode == 0, result.stderr
    made = json.loads(result.stdout)
    assert {k: made[k] for k in ("id", "kind", "backend", "factor", "actor", "expires_at")} == {
        "id": "ov-2",
        "kind": "drain",
        "backend": "gpu-b",
        "factor": 0.0,
        "actor": "oncall",
        "expires_at": None,
    }


def test_restore(server: AdminServer) -> None:
    """`backend restore` lists what it removed, and says so when there was nothing."""
    assert cli(server, "backend", "drain", "gpu-a", "--reason", "r").returncode == 0
    result = cli(server, "backend", "restore", "gpu-a", "--reason", "fixed")
    assert (result.returncode, result.stdout) == (0, "backend gpu-a restored (removed ov-2)\n")
    again = cli(server, "backend", "restore", "gpu-a", "--reason", "fixed")
    assert again.returncode == 0
    assert "nothing to remove" in again.stdout
    assert server.control.calls[-1] == ("restore", "gpu-a", "fixed", "oncall")


def test_override_list_pin_and_clear(server: AdminServer) -> None:
    """`override pin` then `list` shows both pins; `clear` removes one by id."""
    pinned = cli(server, "override", "pin", "chat", "gpu-a", "--reason", "canary", "--ttl", "2h")
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.stdout.startswith("model chat pinned to backend gpu-a, expires in ")
    assert server.control.calls == [("pin", "chat", "gpu-a", "canary", "oncall", "7200.0")]
    table = cli(server, "override", "list").stdout.splitlines()
    assert table[0].split() == [
        "ID", "KIND", "BACKEND", "MODEL", "FACTOR", "EXPIRES", "ACTOR", "REASON",
    ]  # fmt: skip
    assert table[1].split() == [
        "ov-1", "pin", "gpu-b", "chat", "1", "until", "cleared", "setup", "seeded",
    ]  # fmt: skip
    assert table[2].split()[:4] == ["ov-2", "pin", "gpu-a", "chat"]
    cleared = cli(server, "override", "clear", "ov-1", "--reason", "done")
    assert (cleared.returncode, cleared.stdout) == (0, "override ov-1 cleared (pin chat)\n")
    listed = json.loads(cli(server, "override", "list", "--json").stdout)
    assert [o["id"] for o in listed["data"]] == ["ov-2"]


def test_empty_override_list(server: AdminServer) -> None:
    """With nothing in force, `override list` says so instead of an empty table."""
    assert cli(server, "override", "clear", "ov-1", "--reason", "r").returncode == 0
    result = cli(server, "override", "list")
    assert (result.returncode, result.stdout) == (0, "no overrides in force\n")


def test_url_option_beats_the_environment(server: AdminServer) -> None:
    """`--url` is used over $ROUTERCTL_URL."""
    dead = f"http://127.0.0.1:{free_port()}"
    result = cli(None, "backend", "list", "--url", server.url, url_env=dead)
    assert result.returncode == 0, result.stderr
    assert cli(None, "backend", "list", url_env=dead).returncode == 1


def test_viewer_may_list_but_not_change(server: AdminServer) -> None:
    """A viewer token lists, and a change fails with one 'permission denied' line."""
    assert cli(server, "override", "list", token=VIEWER_TOKEN).returncode == 0
    result = cli(server, "backend", "drain", "gpu-a", "--reason", "r", token=VIEWER_TOKEN)
    assert result.returncode == 1
    assert "permission denied" in one_error_line(result)
    assert server.control.calls == []


# --- failures: one line, non-zero exit -----------------------------------------------------


def test_unreachable_router() -> None:
    """No router at the URL: exit 1 and one line saying the connection was refused."""
    url = f"http://127.0.0.1:{free_port()}"
    result = cli(None, "backend", "list", "--url", url)
    assert result.returncode == 1
    expected = f"routerctl: error: cannot reach router at {url}: connection refused"
    assert one_error_line(result) == expected
    assert result.stdout == ""


def test_silent_router_times_out() -> None:
    """A listener that never answers ends in a timeout error, not a hang (client in-process)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        client = AdminClient(url, OPERATOR_TOKEN, timeout_s=0.3)
        with pytest.raises(AdminError, match=r"did not answer within 0\.3 s"):
            client.backends()


@pytest.mark.parametrize("token", ["rka-wrong-token", ORG_KEY, None])
def test_bad_or_missing_token(server: AdminServer, token: str | None) -> None:
    """A wrong, org-key or missing token: exit 1 and one line that mentions ROUTERCTL_TOKEN."""
    result = cli(server, "backend", "list", token=token)
    assert result.returncode == 1
    assert "ROUTERCTL_TOKEN" in one_error_line(result)


def test_unknown_backend(server: AdminServer) -> None:
    """An unknown backend id: exit 1 with the router's 404 message."""
    result = cli(server, "backend", "degrade", "nope", "--weight", "0.5", "--reason", "r")
    assert result.returncode == 1
    assert one_error_line(result) == "routerctl: error: No backend has the id 'nope'."


def test_unknown_override(server: AdminServer) -> None:
    """Clearing an override that is not in force: exit 1 with the router's 404 message."""
    result = cli(server, "override", "clear", "ov-999", "--reason", "r")
    assert result.returncode == 1
    assert "ov-999" in one_error_line(result)


@pytest.mark.parametrize("ttl", ["soon", "400d"])
def test_bad_ttl(server: AdminServer, ttl: str) -> None:
    """A bad --ttl exits 2 with one line and never reaches the router."""
    result = cli(server, "backend", "drain", "gpu-a", "--reason", "r", "--ttl", ttl)
    assert result.returncode == 2
    assert one_error_line(result).startswith("routerctl: error: --ttl: ")
    assert server.control.calls == []


@pytest.mark.parametrize(("option", "factor"), [("--factor", "1.5"), ("--weight", "0")])
def test_factor_out_of_range(server: AdminServer, option: str, factor: str) -> None:
    """A factor outside 0 < F < 1 (as --factor or its alias --weight) comes back from the API
    as one line naming the factor."""
    result = cli(server, "backend", "degrade", "gpu-a", option, factor, "--reason", "r")
    assert result.returncode == 1
    assert "'factor'" in one_error_line(result)


def test_empty_reason_is_refused(server: AdminServer) -> None:
    """An empty --reason is refused by the API: operators must say why."""
    result = cli(server, "backend", "restore", "gpu-a", "--reason", "")
    assert result.returncode == 1
    assert "reason" in one_error_line(result)


# --- keys create-admin ---------------------------------------------------------------------


def test_create_admin_token() -> None:
    """The token goes to stderr once; stdout is [[admin.tokens]] TOML with its hash and role."""
    result = cli(None, "keys", "create-admin", "--id", "oncall-2", "--role", "operator")
    assert result.returncode == 0, result.stderr
    token = result.stderr.strip().rsplit(" ", 1)[-1]
    assert token.startswith("rka-")
    assert token not in result.stdout
    entry = tomllib.loads(result.stdout)["admin"]["tokens"][0]
    assert entry == {"id": "oncall-2", "sha256": hash_key(token), "role": "operator"}


def test_create_admin_token_json() -> None:
    """`--json` prints token, id, role and hash together."""
    result = cli(None, "keys", "create-admin", "--id", "dash", "--role", "viewer", "--json")
    made = json.loads(result.stdout)
    assert (made["id"], made["role"], made["sha256"]) == ("dash", "viewer", hash_key(made["token"]))


@pytest.mark.parametrize(("option", "value"), [("--role", "admin"), ("--id", "no spaces")])
def test_create_admin_token_rejects_bad_input(option: str, value: str) -> None:
    """A role other than viewer/operator, or an id the config would refuse, is one line, exit 2."""
    args = {"--id": "ok", "--role": "viewer", option: value}
    result = cli(None, "keys", "create-admin", *(x for kv in args.items() for x in kv))
    assert result.returncode == 2
    assert one_error_line(result).startswith(f"routerctl: error: {option}: ")
