"""`[server] admin_listen`: the admin routes on a listener of their own, against a real router
process; the public listener refuses them, the admin one refuses the inference routes, and
"public" serves both on one listener as before."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.app import build_app
from appliance.auth.keyring import hash_key
from appliance.settings.loader import load_file
from tests.e2e.cli import RouterProcess, router_process, run_cli
from tests.reliability import Figures
from tests.services import free_port

KEY, OPERATOR = "rk-e2e-listener-key", "rka-e2e-listener-operator"
ON_ADMIN = "is served on the admin listener, not here."
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_PARAM = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")
_CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def config(tmp: Path, mock_url: str) -> Path:
    path = tmp / "router.toml"
    path.write_text(
        f"""
[server]
metrics_listen = ""

[state]
dir = "{tmp / "state"}"

[admin]
tokens = [{{ id = "oncall", sha256 = "{hash_key(OPERATOR)}", role = "operator" }}]

[[backends]]
id = "mock"
url = "{mock_url}"

[[models]]
name = "chat"
backends = [{{ backend = "mock" }}]

[[orgs]]
id = "acme"

[[keys]]
id = "k-acme"
org = "acme"
sha256 = "{hash_key(KEY)}"
"""
    )
    return path


@dataclass(frozen=True)
class Answer:
    status: int
    code: str | None  # the error's code, None on success
    message: str


def call(url: str, method: str, token: str, body: object = None) -> Answer:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback
    request.add_header("authorization", f"Bearer {token}")
    request.add_header("content-type", "application/json")
    try:
        with _HTTP.open(request, timeout=10) as response:
            return Answer(response.status, None, "")
    except urllib.error.HTTPError as error:
        with error:
            detail = json.loads(error.read())["error"]
            return Answer(error.code, detail["code"], detail["message"])


def admin_routes(config_path: Path) -> list[tuple[str, str]]:
    """(method, path) of every admin route of the app, its parameters filled in."""
    app = build_app(load_file(config_path)).quart
    return sorted(
        (method, _PARAM.sub(r"\1", rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/v1/admin/")
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    )


@pytest.fixture
def router(tmp_path: Path, mock_url: str) -> Iterator[RouterProcess]:
    with router_process(["--config", str(config(tmp_path, mock_url))], tmp_path) as running:
        yield running


@pytest.mark.reliability("6.5", "admin routes are not served on the public listener")
def test_the_public_listener_refuses_every_admin_route(
    router: RouterProcess, tmp_path: Path, mock_url: str, figures: Figures
) -> None:
    """Every admin route, with an operator token, is a 404 not_found on the public listener
    saying it is served on the admin listener (an absolute-form target too), and the admin
    listener serves each one (its answer is the route's own)."""
    (tmp_path / "routes").mkdir()
    routes = admin_routes(config(tmp_path / "routes", mock_url))
    assert len(routes) >= 10, routes
    public = [call(router.url + path, method, OPERATOR, {}) for method, path in routes]
    refused = [(a.status, a.code) == (404, "not_found") and ON_ADMIN in a.message for a in public]
    served = [call(router.admin_url + path, method, OPERATOR, {}) for method, path in routes]
    absolute = _absolute_form_status(router.port, f"http://x{routes[0][1]}")
    figures.add("admin routes tried on the public listener", len(routes))
    figures.add("served there", len(routes) - sum(refused), bound=0)
    figures.add("refused on the admin listener", sum(a.code == "not_found" for a in served))
    assert all(refused), [
        (r, a) for r, a, ok in zip(routes, public, refused, strict=True) if not ok
    ]
    assert absolute == 404
    # On the admin listener each route answers as itself: 2xx, or its own error (a backend
    # named "backend_id" is not found as a backend, not as a route).
    assert [a for a in served if a.code == "not_found"] == []


def test_the_admin_listener_serves_status_and_refuses_inference(router: RouterProcess) -> None:
    """The admin listener answers healthz, readyz and the OpenAPI document, and refuses the
    inference and model routes with a 404 naming what it serves; the public listener serves
    those, and its status routes too."""
    for path in ("/v1/status/healthz", "/v1/status/readyz", "/v1/openapi.json"):
        assert call(router.admin_url + path, "GET", OPERATOR).status == 200, path
        assert call(router.url + path, "GET", OPERATOR).status == 200, path
    for method, path, body in (
        ("POST", "/v1/chat/completions", _CHAT),
        ("POST", "/v1/embeddings", {"model": "chat", "input": "hi"}),
        ("GET", "/v1/models", None),
        ("GET", "/v1/usage/some-id", None),
    ):
        refused = call(router.admin_url + path, method, KEY, body)
        assert (refused.status, refused.code) == (404, "not_found"), path
        assert "is not served on the admin listener" in refused.message
    assert _absolute_form_status(router.admin_port, "http://x/v1/chat/completions") == 404
    assert call(router.url + "/v1/chat/completions", "POST", KEY, _CHAT).status == 200


def test_public_serves_the_admin_routes_on_the_one_listener(tmp_path: Path, mock_url: str) -> None:
    """`--admin-listen public`: the admin routes and inference on the listen address, as
    before the split; an admin_listen on listen's port is refused at start with the reason."""
    path = config(tmp_path, mock_url)
    with router_process(["--config", str(path), "--admin-listen", "public"], tmp_path) as router:
        assert call(router.url + "/v1/admin/backends", "GET", OPERATOR).status == 200
        assert call(router.url + "/v1/chat/completions", "POST", KEY, _CHAT).status == 200
    port = free_port()
    clash = ["--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{port}"]
    refused = run_cli("serve", "--config", str(path), *clash)
    assert refused.returncode == 1
    assert "server.admin_listen: its port must differ from listen's" in refused.stderr


def _absolute_form_status(port: int, target: str) -> int:
    """The status of `GET <absolute URI>` on 127.0.0.1:port (clients rarely send this form)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {OPERATOR}\r\n"
        sock.sendall(f"{head}Connection: close\r\n\r\n".encode())
        status_line = sock.makefile("rb").readline()
    return int(status_line.split()[1])
