"""Reloading the config file of a running router: SIGHUP and `POST /v1/admin/config/reload`."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

from appliance.auth.keyring import hash_key
from tests.e2e.cli import RouterProcess, router_process

OPERATOR = "rka-reload-operator"
ORG_KEY = "rk-reload-key"
NEW_KEY = "rk-reload-new-key"
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def write(
    path: Path, mock_url: str, *, weight: float, extra_key: bool = False, server: str = ""
) -> None:
    keys = f'[[keys]]\nid = "k"\norg = "acme"\nsha256 = "{hash_key(ORG_KEY)}"\n'
    if extra_key:
        keys += f'\n[[keys]]\nid = "k2"\norg = "acme"\nsha256 = "{hash_key(NEW_KEY)}"\n'
    path.write_text(
        f"""
[server]
metrics_listen = ""
{server}
[state]
dir = "{path.parent / "state"}"

[admin]
tokens = [{{ id = "oncall", sha256 = "{hash_key(OPERATOR)}", role = "operator" }}]

[[backends]]
id = "mock"
url = "{mock_url}"
weight = {weight}

[[models]]
name = "m"
backends = [{{ backend = "mock" }}]

[[orgs]]
id = "acme"

{keys}"""
    )


def call(
    router: RouterProcess, method: str, path: str, token: str
) -> tuple[int, dict[str, object]]:
    body = b"{}" if method == "POST" else None
    request = urllib.request.Request(  # noqa: S310 - a loopback test URL
        router.url_for(path), data=body, method=method,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )  # fmt: skip
    try:
        with _HTTP.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def chat_status(router: RouterProcess, key: str) -> int:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    status, _ = _post(router, body, key)
    return status


def _post(router: RouterProcess, body: bytes, key: str) -> tuple[int, bytes]:
    request = urllib.request.Request(  # noqa: S310
        f"{router.url}/v1/chat/completions", data=body,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )  # fmt: skip
    try:
        with _HTTP.open(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def backend_weight(router: RouterProcess) -> float:
    _, body = call(router, "GET", "/v1/admin/backends", OPERATOR)
    data = body["data"]
    assert isinstance(data, list)
    return float(data[0]["weight"])


def wait_for(check: object, what: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"not within 10s: {what}")


def test_sighup_reloads_the_file_and_an_invalid_file_changes_nothing(
    mock_url: str, tmp_path: Path
) -> None:
    """SIGHUP applies a new weight and a new key live; a broken file is logged and ignored."""
    config = tmp_path / "router.toml"
    write(config, mock_url, weight=1.0)
    with router_process(["--config", str(config)], tmp_path) as router:
        assert chat_status(router, NEW_KEY) == 401
        write(config, mock_url, weight=3.0, extra_key=True)
        router.process.send_signal(signal.SIGHUP)
        wait_for(lambda: backend_weight(router) == 3.0, "weight 3 after SIGHUP")
        assert chat_status(router, NEW_KEY) == 200

        config.write_text(config.read_text().replace("weight = 3.0", "weight = -1"))
        router.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "config_reload_refused" in router.output(), "refusal logged")
        assert backend_weight(router) == 3.0
        assert chat_status(router, ORG_KEY) == 200
        assert router.terminate() == 0


def test_admin_reload_reports_applied_refused_and_restart_needed(
    mock_url: str, tmp_path: Path
) -> None:
    """The admin API answers what happened: applied (with sections needing a restart), or
    400 config_invalid naming the problem with the old config still serving."""
    config = tmp_path / "router.toml"
    write(config, mock_url, weight=1.0)
    with router_process(["--config", str(config)], tmp_path) as router:
        # --listen (set by router_process) still holds; a file change of it is no news, but
        # a change of another [server] key needs a restart.
        write(config, mock_url, weight=2.0, server='listen = "127.0.0.1:1"\nmax_body_bytes = 9999')
        status, body = call(router, "POST", "/v1/admin/config/reload", OPERATOR)
        assert (status, body["status"], body["source"]) == (200, "applied", "file")
        assert body["restart_needed"] == ["server"]
        assert backend_weight(router) == 2.0

        config.write_text(config.read_text().replace('id = "mock"', 'id = "bad id!"'))
        status, body = call(router, "POST", "/v1/admin/config/reload", OPERATOR)
        assert status == 400
        error = body["error"]
        assert isinstance(error, dict)
        assert error["code"] == "config_invalid"
        assert "backends[0].id" in error["message"]
        assert backend_weight(router) == 2.0
        assert chat_status(router, ORG_KEY) == 200
