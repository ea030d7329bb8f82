"""Bounded client traffic for the reliability rows: what each request ended as, its latency,
the usage record it left, and the router's resident memory."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import msgspec

from appliance.auth.keyring import hash_key

Payload = Callable[[int], dict[str, object]]  # request number -> chat body


@dataclass(frozen=True, slots=True)
class Outcome:
    request_id: str
    status: int  # 0: no HTTP answer (the connection failed)
    kind: str  # "ok", "status" (a non-200), "error_event" (a stream ended by one), "transport"
    seconds: float
    error_code: str = ""


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def errors(self) -> list[Outcome]:
        """Every request the client saw fail, whatever the way."""
        return [o for o in self.outcomes if o.kind != "ok"]

    def kinds(self) -> Counter[str]:
        return Counter(o.kind for o in self.outcomes)

    def p99_ms(self) -> float:
        return p99_ms([o.seconds for o in self.outcomes])


def write_config(
    tmp: Path,
    urls: list[str],
    key: str,
    *,
    server: str = "",
    state: str = "",
    org: str = "",
    extra: str = "",
    backend: str = "",
) -> Path:
    """A router config: model `m` over backends b0, b1, ... at `urls`, one org and `key`,
    no metrics listener or access log; `server` goes in [server], `state` in [state], `org`
    in the org's table, `backend` in each backend's table, `extra` at the top level."""
    backends = "".join(
        f'[[backends]]\nid = "b{n}"\nurl = "{url}"\n{backend}\n\n' for n, url in enumerate(urls)
    )
    routes = ", ".join(f'{{ backend = "b{n}" }}' for n in range(len(urls)))
    path = tmp / "router.toml"
    path.write_text(
        f"""
[server]
metrics_listen = ""
graceful_shutdown_s = 1
{server}

[state]
dir = "{tmp / "state"}"
{state}

[telemetry]
access_log = false
log_level = "error"
{extra}
{backends}
[[models]]
name = "m"
backends = [{routes}]

[[orgs]]
id = "acme"
{org}

[[keys]]
id = "k"
org = "acme"
sha256 = "{hash_key(key)}"
"""
    )
    return path


def p99_ms(seconds: list[float]) -> float:
    """The 99th percentile (nearest rank) in milliseconds; 0 for no samples."""
    if not seconds:
        return 0.0
    ranked = sorted(seconds)
    return round(1000 * ranked[min(len(ranked) - 1, int(0.99 * len(ranked)))], 1)


def chat(content: str = "hello there", *, stream: bool = False) -> dict[str, object]:
    return {"model": "m", "stream": stream, "messages": [{"role": "user", "content": content}]}


def _judge(status: int, body: bytes, stream: bool) -> tuple[str, str]:
    """(kind, error code) of one answer."""
    if status != 200:
        return "status", _code(body)
    if not stream:
        return "ok", ""
    events = [e for e in body.split(b"\n\n") if e]
    if events and events[-1] == b"data: [DONE]":
        return "ok", ""
    last = events[-1] if events else b""
    return "error_event", _code(last.removeprefix(b"data: "))


def _code(body: bytes) -> str:
    try:
        return str(msgspec.json.decode(body)["error"]["code"])
    except (msgspec.DecodeError, KeyError, TypeError):
        return "unreadable"


async def drive(
    url: str,
    key: str,
    payload: Payload,
    count: int,
    *,
    workers: int,
    tally: Tally | None = None,
) -> Tally:
    """Send `count` chat requests from `workers` tasks; every one is accounted in `tally`
    (a new one unless given, so a caller can watch it fill)."""
    tally = Tally() if tally is None else tally
    numbers = iter(range(count))
    headers = {"Authorization": f"Bearer {key}"}
    client_timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:

        async def one(number: int) -> Outcome:
            body = payload(number)
            started = time.monotonic()
            try:
                async with session.post(
                    f"{url}/v1/chat/completions", json=body, headers=headers
                ) as response:
                    data = await response.read()
                    rid = response.headers.get("x-request-id", "")
            except (aiohttp.ClientError, TimeoutError) as exc:
                return Outcome("", 0, "transport", time.monotonic() - started, type(exc).__name__)
            kind, code = _judge(response.status, data, bool(body.get("stream")))
            return Outcome(rid, response.status, kind, time.monotonic() - started, code)

        async def worker() -> None:
            for number in numbers:  # shared: `count` requests in all
                tally.outcomes.append(await one(number))

        await asyncio.gather(*(worker() for _ in range(workers)))
    return tally


async def usage_record(url: str, key: str, request_id: str) -> dict[str, object]:
    """The usage record of a request, waiting (bounded) for it to be written."""
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for _ in range(50):
            async with session.get(f"{url}/v1/usage/{request_id}", headers=headers) as response:
                if response.status == 200:
                    record: dict[str, object] = msgspec.json.decode(await response.read())
                    return record
            await asyncio.sleep(0.05)
    raise AssertionError(f"no usage record for {request_id}")


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS in /proc/PID/status), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise AssertionError(f"no VmRSS for pid {pid}")
