"""`routerctl dev up|status|down`: a local stack a router serves from, started and reaped."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from tests.e2e.cli import router_process, run_cli

pytestmark = pytest.mark.services
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def stack_dir(tmp_path: Path) -> Iterator[Path]:
    """A dev stack's directory, reaped after the test whatever happened."""
    directory = tmp_path / "dev"
    try:
        yield directory
    finally:
        run_cli("dev", "down", "--dir", str(directory))
        with suppress(OSError, ValueError, KeyError):  # down failed: kill by pid group
            for service in json.loads((directory / "stack.json").read_text())["services"]:
                with suppress(ProcessLookupError):
                    os.killpg(service["pid"], signal.SIGKILL)


def test_dev_up_serve_and_down(stack_dir: Path, tmp_path: Path) -> None:
    """`dev up` starts valkey, Tansu, etcd and two mock backends and writes a config that a
    router serves ready (every component healthy, limits from Redis); `status` says up;
    `down` stops every process; a second `up` on a live stack is refused. The config's admin
    listener is on a free port, and the printed export names it."""
    started = run_cli("dev", "up", "--dir", str(stack_dir))
    assert started.returncode == 0, started.stderr
    assert "routerctl serve --config" in started.stdout
    assert run_cli("dev", "up", "--dir", str(stack_dir)).returncode == 1
    state = json.loads((stack_dir / "stack.json").read_text())
    assert [s["name"] for s in state["services"]] == ["valkey", "tansu", "etcd", "mock-a", "mock-b"]
    assert oct((stack_dir / "stack.json").stat().st_mode & 0o777) == "0o600"
    admin = f"127.0.0.1:{state['admin_port']}"  # a free port, written and printed alike
    assert f'admin_listen = "{admin}"' in (stack_dir / "router.toml").read_text()
    assert f"export ROUTERCTL_URL=http://{admin} " in started.stdout
    status = run_cli("dev", "status", "--dir", str(stack_dir))
    assert status.returncode == 0, status.stdout
    assert status.stdout.count(" up") == 5

    config = stack_dir / "router.toml"
    with router_process(["--config", str(config), "--metrics-listen", ""], tmp_path) as router:
        with _HTTP.open(f"{router.url}/v1/status/readyz", timeout=5) as response:
            ready = json.loads(response.read())
        assert ready["status"] == "ready", ready
        assert set(ready["components"].values()) == {"healthy"}
        body = b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}]}'
        request = urllib.request.Request(  # noqa: S310 - our own http URL
            f"{router.url}/v1/chat/completions",
            data=body,
            headers={
                "Authorization": f"Bearer {state['api_key']}",
                "Content-Type": "application/json",
            },
        )
        with _HTTP.open(request, timeout=10) as response:
            assert response.status == 200
            assert response.headers["x-ratelimit-limit-requests"] == "600"

    stopped = run_cli("dev", "down", "--dir", str(stack_dir))
    assert stopped.returncode == 0, stopped.stderr
    for service in state["services"]:
        assert not Path(f"/proc/{service['pid']}").exists() or _zombie(service["pid"])
    gone = run_cli("dev", "status", "--dir", str(stack_dir))
    assert gone.returncode == 1
    assert "dev up first" in gone.stderr


def _zombie(pid: int) -> bool:
    with suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return True
