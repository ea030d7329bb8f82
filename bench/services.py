"""The processes a bench run starts: nginx (the upstream), the do-nothing proxy and routerctl.

(valkey, the Redis of the Redis-limited routerctl row, is started by bench/limits.py; Tansu,
the Kafka broker of the Kafka-sink row, by bench/kafka.py.)

Each is a child of the runner, bound to 127.0.0.1 on a free port, logging into the run's tmp
dir, and registered for `stop()` (SIGTERM, wait, SIGKILL) the moment it is spawned.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import bodies

NGINX = "/usr/sbin/nginx"
BENCH_DIR = Path(__file__).resolve().parent
_STOP_TIMEOUT_S = 10.0
_READY_TIMEOUT_S = 30.0


class StartupError(RuntimeError):
    """A service exited or never became ready; the message carries its log tail."""


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    base_url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_url: str = ""  # routerctl's metrics listener, when it has one

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, wait up to 10 s, then SIGKILL: only this child, by its own PID."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def spawn(
    stack: ExitStack,
    name: str,
    argv: list[str],
    port: int,
    tmp: Path,
    *,
    scheme: str = "http",
    metrics_url: str = "",
    env: dict[str, str] | None = None,
) -> Service:
    log_path = tmp / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=tmp, env=env
        )
    service = Service(name, f"{scheme}://127.0.0.1:{port}", process, log_path, metrics_url)
    stack.callback(service.stop)
    return service


def wait_ready(service: Service, path: str, *, want_status: int | None = None) -> None:
    """Poll GET `path` until it answers (with `want_status`, if given) or the service dies."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise StartupError(
                f"{service.name} exited with code {service.process.returncode}:\n"
                f"{service.log_tail()}"
            )
        status = _get_status(service.base_url + path)
        if status is not None and (want_status is None or status == want_status):
            return
        time.sleep(0.05)
    raise StartupError(
        f"{service.name} not ready after {_READY_TIMEOUT_S:.0f} s:\n{service.log_tail()}"
    )


def _get_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 (our own http URL)
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def _nginx_string(text: str) -> str:
    if any(c in text for c in "'$\\"):
        raise ValueError("body must not contain quote, dollar or backslash characters")
    return "'" + text.replace("\n", "\\n") + "'"


def nginx_conf(tmp: Path, port: int) -> str:
    temp = "\n".join(
        f"    {kind}_temp_path {tmp}/{kind}_temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} backlog=2048;
        location = /v1/chat/completions {{
            default_type application/json;
            return 200 {_nginx_string(bodies.completion_body())};
        }}
        location = /stream/v1/chat/completions {{
            default_type text/event-stream;
            add_header Cache-Control no-cache;
            return 200 {_nginx_string(bodies.stream_body())};
        }}
        location = /health {{ return 200 'ok'; }}
        location / {{ return 404; }}
    }}
}}
"""


def start_nginx(stack: ExitStack, tmp: Path) -> Service:
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_conf(tmp, port))
    argv = [NGINX, "-p", f"{tmp}/", "-e", f"{tmp}/nginx-error.log", "-c", str(conf)]
    service = spawn(stack, "nginx", argv, port, tmp)
    wait_ready(service, "/")
    return service


def start_noop_proxy(stack: ExitStack, tmp: Path, upstream: Service, workers: int = 1) -> Service:
    port = free_port()
    script = str(BENCH_DIR / "noop_proxy.py")
    argv = [sys.executable, script, str(port), upstream.base_url, str(workers)]
    service = spawn(stack, f"noop-proxy-{workers}w", argv, port, tmp)
    wait_ready(service, "/")
    return service


def routerctl_argv() -> list[str]:
    """The console script beside this interpreter, else on PATH, else the module entry point."""
    beside = Path(sys.executable).parent / "routerctl"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("routerctl")
    if found:
        return [found]
    return [sys.executable, "-c", "from routerctl.main import run; run()"]


# Limits so high that nothing is ever refused: the Redis row measures what checking them costs.
# Every request then takes from 4 buckets (org and key, rpm and tpm) in one EVALSHA and settles
# its tokens afterwards (off the response path).
BENCH_RPM = 100_000_000
BENCH_TPM = 1_000_000_000
BENCH_CONCURRENT = 100_000
BENCH_BUDGET_USD = 1_000_000_000.0


def routerctl_conf(
    state_dir: Path,
    port: int,
    metrics_port: int,
    upstream: str,
    key: str,
    *,
    redis_url: str = "",
    sink: str = "",
    kafka_bootstrap: str = "",
    full: bool = False,
    workers: int = 1,
    admin_port: int = 0,
    engine: str = "",
) -> str:
    """The plain config; with `redis_url`, the same plus huge rpm/tpm limits kept in Redis.

    `full` (the routerctl+full row, with `redis_url` and the Kafka sink) turns every feature
    on: rpm, tpm and concurrency limits on the org and the key, a monthly budget checked per
    request (prices set, so every record has a cost), active health probes every second, and
    the JSON access log; tracing stays off.

    `engine` sets `[server] engine` (else the default, routerctl's own HTTP/1.1 server).

    `sink` sets `[usage] sink` ("none", "kafka" with `kafka_bootstrap`); without it the
    router keeps the default, "file" (JSON lines in its state dir). Every sink, "none" too,
    commits each record to the SQLite outbox first: the sink is what drains it.

    Two settings there keep the row measuring what it claims, every request through Redis:
    `redis_failure_mode = "closed"`, so a Redis call that fails answers 503 and fails the case
    instead of quietly falling back to in-process buckets (the default "open" mode); and
    `redis_timeout_s = 1.0` instead of 50 ms, which a descheduling on a busy 2-core VM exceeds
    now and then (each time the limiter then skips Redis for a second). A longer timeout costs
    nothing when Redis answers, so the measured cost is that of the default.
    """
    digest = hashlib.sha256(key.encode()).hexdigest()
    # The admin API on its own port, as by default (its listener check is on every request).
    admin = f'admin_listen = "127.0.0.1:{admin_port}"\n' if admin_port else ""
    admin += f'engine = "{engine}"\n' if engine else ""
    state, limits, usage, org_extra, prices = "", "", "", "", ""
    access_log = "false"
    if sink:
        usage = f'[usage]\nsink = "{sink}"\n'
        usage += f'kafka_bootstrap = ["{kafka_bootstrap}"]\n\n' if kafka_bootstrap else "\n"
    if redis_url:
        state = f'redis_url = "{redis_url}"\nredis_failure_mode = "closed"\n\n'
        state += "[limits]\nredis_timeout_s = 1.0\n"
        limits = f"rpm = {BENCH_RPM}\ntpm = {BENCH_TPM}\n"
    if full:
        limits += f"max_concurrent = {BENCH_CONCURRENT}\n"
        org_extra = f"monthly_budget_usd = {BENCH_BUDGET_USD}\n"
        prices = "input_price_per_1k = 0.0005\noutput_price_per_1k = 0.0015\n"
        state += "\n[routing]\nhealth_interval_s = 1.0\n"
        access_log = "true"
    return f"""\
[server]
listen = "127.0.0.1:{port}"
metrics_listen = "127.0.0.1:{metrics_port}"
{admin}workers = {workers}

[state]
dir = "{state_dir}"
{state}

[telemetry]
log_level = "warning"
access_log = {access_log}

{usage}[[backends]]
id = "nginx-json"
url = "{upstream}/v1"

[[backends]]
id = "nginx-stream"
url = "{upstream}/stream/v1"

[[models]]
name = "{bodies.JSON_MODEL}"
backends = [{{ backend = "nginx-json" }}]
{prices}
[[models]]
name = "{bodies.STREAM_MODEL}"
backends = [{{ backend = "nginx-stream" }}]
{prices}
[[orgs]]
id = "bench"
{limits}{org_extra}
[[keys]]
id = "bench"
org = "bench"
sha256 = "{digest}"
{limits}"""


def start_routerctl(
    stack: ExitStack,
    tmp: Path,
    upstream: Service,
    *,
    name: str = "routerctl",
    redis_url: str = "",
    sink: str = "",
    kafka_bootstrap: str = "",
    full: bool = False,
    workers: int = 1,
    key: str | None = None,
    engine: str = "",
) -> tuple[Service, str]:
    """Start `routerctl serve` (with Redis limits when `redis_url` is given, the usage sink
    `sink` when given).

    Returns it and the API key its config accepts (`key`, else a new one). Each instance has
    its own state dir.
    """
    port, metrics_port, admin_port = free_port(), free_port(), free_port()
    key = key or "sk-bench-" + secrets.token_hex(16)
    conf = tmp / f"{name}.toml"
    state_dir = tmp / f"{name}-state"
    conf.write_text(
        routerctl_conf(
            state_dir,
            port,
            metrics_port,
            upstream.base_url,
            key,
            redis_url=redis_url,
            sink=sink,
            kafka_bootstrap=kafka_bootstrap,
            full=full,
            workers=workers,
            admin_port=admin_port,
            engine=engine,
        )
    )
    argv = [*routerctl_argv(), "serve", "--config", str(conf)]
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    service = spawn(stack, name, argv, port, tmp, metrics_url=metrics_url)
    wait_ready(service, "/v1/status/healthz", want_status=200)
    return service, key


def versions() -> dict[str, str]:
    """Tool versions for the JSON report; a missing tool reads as 'unknown'."""
    found: dict[str, str] = {"python": sys.version.split()[0]}
    for name, argv in (("nginx", [NGINX, "-v"]), ("wrk", ["wrk", "--version"])):
        found[name] = "unknown"
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
            lines = (done.stdout + done.stderr).strip().splitlines()
            found[name] = lines[0].strip() if lines else "unknown"
    return found


def commit() -> str:
    """The commit the bench runs at (with "-dirty" for uncommitted changes), else 'unknown'."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=5, check=False, cwd=BENCH_DIR,
        )  # fmt: skip
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    return "unknown"
