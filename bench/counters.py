"""Counters read before and after a measured run, for what one request costs.

- CPU: utime + stime from /proc/PID/stat, of the routers (each with its children), of valkey
  and of Tansu;
- Redis: `INFO stats` (total_commands_processed; total_reads_processed, one per read event the
  server handled: a command or a whole pipeline a client sent in one go, i.e. a round trip)
  and `INFO commandstats` (calls per command), in one INFO call;
- Kafka: bytes the broker (Tansu) received and sent on its listener, summed over its
  established connections from the kernel's TCP counters (`ss -ti`): wire bytes, Kafka
  framing and metadata requests included. routerctl has no metric of bytes sent to Kafka, so
  this is measured on the broker's side; connections closed during the run are not counted
  (the producers keep theirs open).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from limits import redis_command

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_SS_BYTES = re.compile(r"\bbytes_(received|acked):(\d+)")


@dataclass(frozen=True, slots=True)
class Snapshot:
    cpu_s: float  # routers' user + system CPU seconds
    redis_cpu_s: float  # valkey's
    kafka_cpu_s: float  # Tansu's
    redis_commands: int  # total_commands_processed
    redis_reads: int  # total_reads_processed (round trips)
    redis_calls: dict[str, int] = field(default_factory=dict)  # commandstats: calls per command
    kafka_in: int | None = None  # bytes the broker received; None when unmeasurable
    kafka_out: int | None = None  # bytes the broker sent (acknowledged by the clients)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(c) for c in task.read_text().split()]
        except OSError:
            continue
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of `pids` and all their descendants (0 for the gone)."""
    total, todo = 0, list(pids)
    while todo:
        pid = todo.pop()
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        todo += _children(pid)
    return total / _TICKS_PER_S


def redis_info(port: int) -> tuple[int, int, dict[str, int]]:
    """(total_commands_processed, total_reads_processed, calls per command) of one server."""
    text = redis_command(port, b"INFO stats commandstats").decode(errors="replace")
    commands = reads = -1
    calls: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.strip().partition(":")
        if name == "total_commands_processed":
            commands = int(value)
        elif name == "total_reads_processed":
            reads = int(value)
        elif name.startswith("cmdstat_"):
            fields = dict(f.split("=", 1) for f in value.split(",") if "=" in f)
            calls[name.removeprefix("cmdstat_")] = int(fields.get("calls", "0"))
    if commands < 0 or reads < 0:
        raise RuntimeError(f"valkey on port {port}: INFO stats unreadable: {text[:200]!r}")
    return commands, reads, calls


def kafka_bytes(port: int) -> tuple[int, int] | None:
    """(received, sent) bytes on the established connections to `port`; None without ss."""
    if shutil.which("ss") is None:
        return None
    done = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return None
    seen = {"received": 0, "acked": 0}
    for kind, count in _SS_BYTES.findall(done.stdout):
        seen[kind] += int(count)
    return seen["received"], seen["acked"]


@dataclass(frozen=True, slots=True)
class Watched:
    """What the counters are read from: the routers' PIDs, valkey's and Tansu's PID and port."""

    router_pids: list[int]
    redis_pid: int
    redis_port: int
    kafka_pid: int
    kafka_port: int


def snapshot(watched: Watched) -> Snapshot:
    commands, reads, calls = redis_info(watched.redis_port)
    wire = kafka_bytes(watched.kafka_port)
    return Snapshot(
        cpu_seconds(watched.router_pids),
        cpu_seconds([watched.redis_pid]),
        cpu_seconds([watched.kafka_pid]),
        commands,
        reads,
        calls,
        None if wire is None else wire[0],
        None if wire is None else wire[1],
    )


def per_request(before: Snapshot, after: Snapshot, requests: int) -> dict[str, object]:
    """What each of `requests` cost between the two snapshots. The INFO call that took
    `before` counts in `after`'s totals (one command, one read): taken off. Commands count
    those a script runs too (an EVALSHA whose script makes 2 calls is 3 commands)."""
    n = max(requests, 1)
    calls = {
        name: (after.redis_calls.get(name, 0) - before.redis_calls.get(name, 0)) / n
        for name in sorted(after.redis_calls)
        if name != "info" and after.redis_calls.get(name, 0) > before.redis_calls.get(name, 0)
    }
    kafka_in = kafka_out = None
    if before.kafka_in is not None and after.kafka_in is not None:
        kafka_in = (after.kafka_in - before.kafka_in) / n
    if before.kafka_out is not None and after.kafka_out is not None:
        kafka_out = (after.kafka_out - before.kafka_out) / n
    return {
        "router_cpu_us": (after.cpu_s - before.cpu_s) * 1e6 / n,
        "router_cpu_s": after.cpu_s - before.cpu_s,
        "redis_cpu_us": (after.redis_cpu_s - before.redis_cpu_s) * 1e6 / n,
        "kafka_cpu_us": (after.kafka_cpu_s - before.kafka_cpu_s) * 1e6 / n,
        "redis_commands": (after.redis_commands - before.redis_commands - 1) / n,
        "redis_round_trips": (after.redis_reads - before.redis_reads - 1) / n,
        "redis_calls": calls,
        "kafka_bytes_in": kafka_in,
        "kafka_bytes_out": kafka_out,
    }
