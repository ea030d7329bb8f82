"""`routerctl top` against a running demo: the JSON of one interval, and the live view in a
real terminal (tmux), as an on-call engineer opens it."""

from __future__ import annotations

import json
import shlex
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.demo import DEMO_ADMIN_TOKEN, DEMO_KEY
from tests.e2e.cli import RouterProcess, free_port, router_process, routerctl_command, run_cli
from tests.tools import debian_tool

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RouterProcess, str]]:
    tmp = tmp_path_factory.mktemp("top")
    metrics = f"127.0.0.1:{free_port()}"
    with router_process(["--demo", "--metrics-listen", metrics], tmp) as router:
        yield router, f"http://{metrics}/metrics"


def traffic(url: str, seconds: float) -> threading.Thread:
    """Chat requests in the background for `seconds` (bounded), so rates are not zero."""

    def send() -> None:
        body = json.dumps({"model": "demo", "messages": [{"role": "user", "content": "hi"}]})
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            request = urllib.request.Request(  # noqa: S310 - our own http URL
                f"{url}/v1/chat/completions",
                data=body.encode(),
                headers={"Authorization": f"Bearer {DEMO_KEY}", "Content-Type": "application/json"},
            )
            with _HTTP.open(request, timeout=5) as response:
                response.read()
            time.sleep(0.02)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_once_json_has_rates_for_backends_and_models(demo: tuple[RouterProcess, str]) -> None:
    """`top --once --json` measures one interval: both backends and the demo org's model
    show requests per second, with the admin API's health beside them."""
    router, metrics = demo
    sender = traffic(router.url, 3.0)
    env = {"ROUTERCTL_URL": router.admin_url, "ROUTERCTL_TOKEN": DEMO_ADMIN_TOKEN}
    done = run_cli("top", "--once", "--json", "--metrics-url", metrics, env=env)
    sender.join(10)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    backends = {b["id"]: b for b in shown["backends"]}
    assert set(backends) == {"mock-a", "mock-b"}
    assert all(b["health"] == "healthy" and b["rps"] > 0 for b in backends.values())
    (model,) = shown["models"]
    assert (model["org"], model["model"]) == ("demo", "demo")
    assert model["rps"] > 0


def test_the_live_view_in_a_terminal(demo: tuple[RouterProcess, str], tmp_path: Path) -> None:
    """Under tmux, `routerctl top` draws its tables and refreshes them; the pane shows the
    columns, both backends and the model's row."""
    tmux = str(debian_tool("tmux", "tmux"))
    router, metrics = demo
    session = f"top-{uuid.uuid4().hex[:8]}"
    command = shlex.join([*routerctl_command(), "top", "--metrics-url", metrics])
    env = f"ROUTERCTL_URL={router.admin_url} ROUTERCTL_TOKEN={DEMO_ADMIN_TOKEN}"
    socket = str(tmp_path / "tmux.sock")  # a server of our own, ended with the test
    subprocess.run(
        [tmux, "-S", socket, "new-session", "-d", "-s", session, "-x", "160", "-y", "40",
         f"env {env} {command}"],
        check=True, timeout=10,
    )  # fmt: skip
    try:
        sender = traffic(router.url, 4.0)
        pane = ""
        for _ in range(40):  # bounded: up to 8 s for two refreshes
            time.sleep(0.2)
            pane = subprocess.run(
                [tmux, "-S", socket, "capture-pane", "-p", "-t", session],
                capture_output=True, text=True, check=True, timeout=10,
            ).stdout  # fmt: skip
            if "mock-b" in pane and "demo" in pane:
                break
        sender.join(10)
        for word in ("BACKEND", "RPS", "P99 ms", "mock-a", "mock-b", "ORG", "429/s", "demo"):
            assert word in pane, pane
    finally:
        subprocess.run([tmux, "-S", socket, "kill-server"], timeout=10, check=False)
