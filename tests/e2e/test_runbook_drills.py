"""The runbooks' drills on a real router from a file config, in front of two
`routerctl mock-backend` processes: the commands of docs/runbooks.md as an on-call engineer
types them, and the output the runbooks say to expect.

Backend degradation, failover recovery (a backend stopped and restarted, then both: panic
mode and readiness), a policy change and its rollback by file reload, rate-limit and budget
refusals and how they are found, and the drill options of the mock backend.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path

import pytest

from appliance.auth.keyring import hash_key
from tests.e2e.cli import RouterProcess, router_process, routerctl_command, run_cli
from tests.services import free_port

MODEL = "llama-3-8b"
ACME_KEY = "rk-runbook-acme"
TINY_KEY = "rk-runbook-tiny"
CAPPED_KEY = "rk-runbook-capped"
OPERATOR = "rka-runbook-oncall"
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- mock backends that can be stopped and started again on their port ----------------------
class MockBackend:
    """`routerctl mock-backend --port P --model llama-3-8b [extra]`, as in the runbooks' drills."""

    def __init__(self, tmp: Path, name: str, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra = extra
        self.log = tmp / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["mock-backend", "--port", str(self.port), "--model", MODEL, *self.extra]
        with self.log.open("a") as sink:
            self.process = subprocess.Popen(
                [*routerctl_command(), *argv], stdout=sink, stderr=subprocess.STDOUT
            )
        wait_for(lambda: get(f"{self.url}/health")[0] == 200, f"mock backend on {self.port}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[dict[str, MockBackend]]:
    mocks = {name: MockBackend(tmp_path, name) for name in ("vllm-a", "vllm-b")}
    try:
        for mock in mocks.values():
            mock.start()
        yield mocks
    finally:
        for mock in mocks.values():
            mock.stop()


# -- HTTP as curl does it ----------------------------------------------------------------------
def request(
    method: str, url: str, token: str | None = None, body: object = None
) -> tuple[int, dict[str, str], str]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with _HTTP.open(req, timeout=10) as response:
            return response.status, _lower(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, _lower(exc.headers), exc.read().decode()
    except OSError as exc:
        return 0, {}, str(exc)


def _lower(headers: Message) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def get(url: str, token: str | None = None) -> tuple[int, str]:
    status, _, body = request("GET", url, token)
    return status, body


def chat(router: Router | RouterProcess, key: str = ACME_KEY) -> tuple[int, dict[str, str], str]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 5}
    return request("POST", f"{router.url}/v1/chat/completions", key, body)


def readyz(router: Router | RouterProcess) -> tuple[int, dict[str, object]]:
    status, body = get(f"{router.url}/v1/status/readyz")
    return status, json.loads(body)


def metric_lines(metrics_url: str, pattern: str) -> list[str]:
    """`curl -s http://…:9090/metrics | grep -E PATTERN`."""
    status, body = get(f"{metrics_url}/metrics")
    assert status == 200
    return [line for line in body.splitlines() if re.search(pattern, line)]


def wait_for(check: Callable[[], object], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout:.0f}s: {what}")


# -- the router ---------------------------------------------------------------------------------
def write_config(path: Path, backends: dict[str, MockBackend], *, weight_b: float = 1.0,
                 budget: float = 0.01) -> None:  # fmt: skip
    path.write_text(
        f"""
[server]
graceful_shutdown_s = 2

[state]
dir = "{path.parent / "state"}"

[[admin.tokens]]
id = "oncall"
sha256 = "{hash_key(OPERATOR)}"
role = "operator"

[routing]
health_interval_s = 0.3
health_timeout_s = 1.0
base_ejection_s = 2.0

[[backends]]
id = "vllm-a"
url = "{backends["vllm-a"].url}/v1"

[[backends]]
id = "vllm-b"
url = "{backends["vllm-b"].url}/v1"
weight = {weight_b}

[[models]]
name = "{MODEL}"
backends = [{{ backend = "vllm-a" }}, {{ backend = "vllm-b" }}]
input_price_per_1k = 0.5
output_price_per_1k = 1.5

[[orgs]]
id = "acme"

[[keys]]
id = "acme-prod"
org = "acme"
sha256 = "{hash_key(ACME_KEY)}"

[[orgs]]
id = "tiny"
rpm = 2

[[keys]]
id = "tiny-ci"
org = "tiny"
sha256 = "{hash_key(TINY_KEY)}"

[[orgs]]
id = "capped"
monthly_budget_usd = {budget}

[[keys]]
id = "capped-ci"
org = "capped"
sha256 = "{hash_key(CAPPED_KEY)}"
"""
    )


class Router:
    def __init__(self, process: RouterProcess, config: Path, metrics_url: str) -> None:
        self.process = process
        self.url = process.url
        self.admin_url = process.admin_url
        self.config = config
        self.metrics_url = metrics_url

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """routerctl with ROUTERCTL_URL and ROUTERCTL_TOKEN exported, as the runbooks say."""
        return run_cli(*args, env={"ROUTERCTL_URL": self.admin_url, "ROUTERCTL_TOKEN": OPERATOR})

    def ok(self, *args: str) -> str:
        result = self.cli(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def row(self, backend: str) -> list[str]:
        """`routerctl backend list`: the backend's row, as columns (OVERRIDE may hold spaces)."""
        rows = [r for r in self.ok("backend", "list").splitlines() if r.startswith(backend)]
        assert len(rows) == 1, rows
        return rows[0].split()


@pytest.fixture
def router(backends: dict[str, MockBackend], tmp_path: Path) -> Iterator[Router]:
    config = tmp_path / "router.toml"
    write_config(config, backends)
    validated = run_cli("config", "validate", str(config))
    assert (validated.returncode, validated.stdout) == (0, f"{config}: ok\n"), validated.stderr
    metrics = f"127.0.0.1:{free_port()}"
    with router_process(
        ["--config", str(config), "--metrics-listen", metrics], tmp_path
    ) as running:
        yield Router(running, config, f"http://{metrics}")


# -- backend degradation --------------------------------------------------------------------------
def test_backend_degradation_runbook(router: Router) -> None:
    """degrade, drain, pin, restore, clear and the audit trail print what the runbook shows,
    and the backend list shows each override."""
    made = router.ok(
        "backend", "degrade", "vllm-b", "--weight", "0.25", "--reason", "p99 10s, INC-142",
        "--ttl", "1h",
    )  # fmt: skip
    degrade = re.fullmatch(
        r"backend vllm-b degraded to x0\.25, expires in 1h \(override (ovr-\w+)\)\n", made
    )
    assert degrade, made
    row = router.row("vllm-b")
    assert row[:4] == ["vllm-b", "healthy", "1", "0.25"]
    assert " ".join(row[6:10]) == "degrade x0.25, expires in"

    drained = router.ok(
        "backend", "drain", "vllm-b", "--reason", "redeploy, INC-142", "--ttl", "30m"
    )
    drain = re.fullmatch(
        r"backend vllm-b drained, expires in 30m \(override (ovr-\w+)\)\n", drained
    )
    assert drain, drained
    row = router.row("vllm-b")
    assert row[3] == "0"
    assert re.search(r"drain, expires in (30m|29m \d+s)", " ".join(row))

    pinned = router.ok("override", "pin", MODEL, "vllm-a", "--reason", "INC-142", "--ttl", "1h")
    pin = re.fullmatch(
        rf"model {MODEL} pinned to backend vllm-a, expires in 1h \(override (ovr-\w+)\)\n", pinned
    )
    assert pin, pinned
    listed = router.ok("override", "list").splitlines()
    assert listed[0].split() == [
        "ID", "KIND", "BACKEND", "MODEL", "FACTOR", "EXPIRES", "ACTOR", "REASON",
    ]  # fmt: skip
    assert {line.split()[0] for line in listed[1:]} == {
        degrade.group(1),
        drain.group(1),
        pin.group(1),
    }
    assert chat(router)[0] == 200  # vllm-a serves everything meanwhile

    restored = router.ok("backend", "restore", "vllm-b", "--reason", "fixed, INC-142")
    removed = f"{degrade.group(1)}, {drain.group(1)}"
    assert restored == f"backend vllm-b restored (removed {removed})\n"
    cleared = router.ok("override", "clear", pin.group(1), "--reason", "INC-142 resolved")
    assert cleared == f"override {pin.group(1)} cleared (pin {MODEL})\n"
    assert router.row("vllm-b")[:4] == ["vllm-b", "healthy", "1", "1"]
    assert router.ok("override", "list").splitlines()[1:] == []

    audit = router.ok("audit", "lookup", "--since", "1h").splitlines()
    assert audit[0].split() == [
        "TIME", "KIND", "ACTOR", "ORG", "KEY", "REQUEST", "SUBJECT", "REASON",
    ]  # fmt: skip
    assert [line.split()[1:3] for line in audit[1:]] == [
        ["override.clear", "oncall"],
        ["backend.restore", "oncall"],
        ["backend.restore", "oncall"],
        ["override.pin", "oncall"],
        ["backend.drain", "oncall"],
        ["backend.degrade", "oncall"],
    ]
    assert audit[-1].split()[-4:] == ["vllm-b", "p99", "10s,", "INC-142"]


# -- failover recovery ---------------------------------------------------------------------------
def test_failover_recovery_runbook(router: Router, backends: dict[str, MockBackend]) -> None:
    """One backend down: clients see no error, it is ejected, readiness stays ready. Both
    down: 502, readiness 503 naming the model, panic mode 1. Both back: ready again, no
    restart of the router."""
    backends["vllm-b"].stop()
    assert [chat(router)[0] for _ in range(20)] == [200] * 20  # failover hides it
    wait_for(lambda: router.row("vllm-b")[1] in ("ejected", "unhealthy"), "vllm-b out")
    assert readyz(router)[0] == 200
    failovers = metric_lines(router.metrics_url, r"^router_failover_total\{")
    assert any('from="vllm-b"' in line and 'to="vllm-a"' in line for line in failovers)

    backends["vllm-a"].stop()
    status, _, body = chat(router)
    assert status == 502
    assert json.loads(body)["error"]["code"] == "upstream_connect_error"
    wait_for(lambda: readyz(router)[0] == 503, "readyz 503")
    _, ready = readyz(router)
    assert ready["status"] == "degraded"
    assert ready["components"]["backend_registry"] == "unhealthy"  # type: ignore[index]
    assert ready["details"] == {"backend_registry": f"no routable backend for: {MODEL}"}
    assert metric_lines(router.metrics_url, r"^router_panic_mode\{") == [
        f'router_panic_mode{{model="{MODEL}"}} 1.0'
    ]

    for mock in backends.values():
        mock.start()
    wait_for(lambda: readyz(router)[0] == 200, "readyz 200 after the backends came back")
    wait_for(
        lambda: [router.row(b)[1] for b in ("vllm-a", "vllm-b")] == ["healthy", "healthy"],
        "both backends healthy (an ejection ends after base_ejection_s)",
    )
    assert chat(router)[0] == 200
    assert metric_lines(router.metrics_url, r"^router_panic_mode\{") == [
        f'router_panic_mode{{model="{MODEL}"}} 0.0'
    ]


# -- routing policy update without etcd: reload and roll back ------------------------------------
def test_policy_update_by_file_reload_and_rollback(
    router: Router, backends: dict[str, MockBackend], tmp_path: Path
) -> None:
    """Edit, validate, `POST /v1/admin/config/reload`: the new weight applies at once; a broken
    file answers 400 config_invalid and changes nothing; the previous file reloaded rolls back."""
    previous = router.config.read_text()
    write_config(router.config, backends, weight_b=0.5)
    assert run_cli("config", "validate", str(router.config)).returncode == 0
    reload = f"{router.admin_url}/v1/admin/config/reload"
    status, _, body = request("POST", reload, OPERATOR)
    assert status == 200
    applied = json.loads(body)
    # router_process adds --listen, which the file does not have: [server] differs from the
    # running one and is reported; under systemd (no overrides) restart_needed is [].
    assert applied.pop("restart_needed") in ([], ["server"])
    assert applied == {"status": "applied", "source": "file", "revision": 0}
    assert router.row("vllm-b")[2:4] == ["0.5", "0.5"]

    router.config.write_text(router.config.read_text() + "\n[[bogus]]\n")
    status, _, body = request("POST", reload, OPERATOR)
    error = json.loads(body)["error"]
    assert (status, error["code"]) == (400, "config_invalid")
    assert error["message"].startswith(
        f"The config file is invalid; the running config is unchanged: {router.config}: bogus: "
    )
    assert router.row("vllm-b")[2] == "0.5"
    lines = metric_lines(router.metrics_url, r"^router_config_applies_total\{")
    assert 'router_config_applies_total{result="rejected"} 1.0' in lines

    router.config.write_text(previous)  # roll back: the previous file, reloaded the same way
    status, _, _ = request("POST", reload, OPERATOR)
    assert status == 200
    assert router.row("vllm-b")[2:4] == ["1", "1"]


# -- rate limits and budgets -----------------------------------------------------------------------
def test_rate_limit_refusal_is_found_by_metrics_and_audit(router: Router) -> None:
    """The third request of an org with rpm = 2 gets the runbook's 429; the denial counter and
    `audit lookup --kind limit.deny` name the org and the limit; config show has the value."""
    assert [chat(router, TINY_KEY)[0] for _ in range(2)] == [200, 200]
    status, headers, body = chat(router, TINY_KEY)
    assert status == 429
    assert int(headers["retry-after"]) > 0
    assert headers["x-ratelimit-remaining-requests"] == "0"
    error = json.loads(body)["error"]
    assert error == {
        "message": "Rate limit reached for requests per minute on org 'tiny': limit 2. "
        "Retry after the time in Retry-After.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert metric_lines(router.metrics_url, r"^router_rate_limit_(shadow_)?denials_total") == [
        'router_rate_limit_denials_total{limit="rpm",org="tiny",scope="org"} 1.0'
    ]
    lookup = ("audit", "lookup", "--kind", "limit.deny", "--since", "15m")
    wait_for(lambda: "org:tiny:rpm" in router.ok(*lookup), "the denial in the audit log")
    shown = json.loads(router.ok("config", "show", str(router.config)))
    assert next(o for o in shown["orgs"] if o["id"] == "tiny")["rpm"] == 2


def test_budget_exhaustion_and_raising_it_by_reload(
    router: Router, backends: dict[str, MockBackend]
) -> None:
    """An org past its budget gets 429 budget_exceeded (insufficient_quota); the metrics show
    spend and limit; raising the budget by reload serves it again and keeps the spend."""
    assert chat(router, CAPPED_KEY)[0] == 200  # costs more than the $0.01 budget
    wait_for(lambda: chat(router, CAPPED_KEY)[0] == 429, "the budget refusal")
    status, _, body = chat(router, CAPPED_KEY)
    assert status == 429
    assert json.loads(body)["error"] == {
        "message": "Organization 'capped' has spent its monthly budget of $0.01; "
        "it renews at the start of next month (UTC).",
        "type": "insufficient_quota",
        "param": None,
        "code": "budget_exceeded",
    }
    pattern = r"^router_budget_(spent|limit)_usd\{org=\"capped\"|^router_budget_denials_total"
    lines = metric_lines(router.metrics_url, pattern)
    assert 'router_budget_limit_usd{org="capped"} 0.01' in lines
    spent = next(line for line in lines if line.startswith("router_budget_spent_usd"))
    assert float(spent.split()[-1]) > 0.01
    assert any(line.startswith('router_budget_denials_total{org="capped"') for line in lines)
    audit = router.ok("audit", "lookup", "--org", "capped", "--kind", "limit.deny", "--since", "1h")
    assert "monthly_budget_usd" in audit

    write_config(router.config, backends, budget=50.0)
    status, _, _ = request("POST", f"{router.admin_url}/v1/admin/config/reload", OPERATOR)
    assert status == 200
    assert 'router_budget_limit_usd{org="capped"} 50.0' in metric_lines(router.metrics_url, pattern)
    assert chat(router, CAPPED_KEY)[0] == 200

    def spend() -> float:
        lines = metric_lines(router.metrics_url, r'^router_budget_spent_usd\{org="capped"')
        return float(lines[0].split()[-1])

    # Spend was kept over the reload, and the new request adds to it once it settles.
    wait_for(lambda: spend() > float(spent.split()[-1]), "the new request's spend")


# -- the drill backends ----------------------------------------------------------------------------
def test_mock_backend_drill_options(tmp_path: Path) -> None:
    """`routerctl mock-backend --port P --model llama-3-8b --latency-ms N --fail-rate F`: lists
    the model, answers after the latency, and fails the given fraction (1 = every request)."""
    mock = MockBackend(tmp_path, "slow", "--latency-ms", "300", "--fail-rate", "1")
    try:
        mock.start()
        status, body = get(f"{mock.url}/v1/models")
        assert status == 200
        assert [m["id"] for m in json.loads(body)["data"]] == [MODEL]
        started = time.monotonic()
        body_json = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        status, _, _ = request("POST", f"{mock.url}/v1/chat/completions", None, body_json)
        assert time.monotonic() - started >= 0.3
        assert status == 500
    finally:
        mock.stop()
