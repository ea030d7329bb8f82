"""Row 2 of the reliability matrix: one backend of three fails, under bounded load through a
real router process; the figure is how many requests the clients saw fail.

The backends are `routerctl mock-backend` processes (shared by the module, reset per test). The
faulty one is made faulty through its live config (`directives`, `fail_rate`), so its peers
stay healthy and the router's failover is what is measured. Finer points of each failure (error
codes, headers, health accounting) are tested in tests/integration/test_backend_answers.py,
test_routing_failover.py and test_router_relay.py.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.cli import MockProcess, RouterProcess, router_process
from tests.e2e.traffic import Payload, Tally, chat, drive, rss_mb, usage_record, write_config
from tests.reliability import Figures

KEY = "rk-e2e-backend-faults"
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# Fast probes and ejection after 3 failures in a row; retries at a trickle always allowed.
ROUTING = """
[routing]
health_interval_s = 0.2
health_timeout_s = 0.5
healthy_threshold = 1
unhealthy_threshold = 2
consecutive_failures = 3
base_ejection_s = 30
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[MockProcess]]:
    """Three `routerctl mock-backend` processes for the module, started together."""
    tmp = tmp_path_factory.mktemp("fleet")
    mocks = [MockProcess(tmp) for _ in range(3)]
    try:
        for mock in mocks:
            mock.launch()
        for mock in mocks:
            mock.wait_ready()
        yield mocks
    finally:
        for mock in mocks:
            mock.stop()


@pytest.fixture
def backends(fleet: list[MockProcess]) -> list[MockProcess]:
    """The fleet, every member alive (a killed one restarted) and back to healthy defaults."""
    for mock in fleet:
        if not mock.alive():
            mock.launch()
            mock.wait_ready()
        configure(mock, latency_ms=0, fail_rate=0, fail_status=500, directives="")
        _HTTP.open(urllib.request.Request(f"http://127.0.0.1:{mock.port}/_mock/reset", b""))
    return fleet


def configure(mock: MockProcess, **changes: object) -> None:
    """POST /_mock/config: the live behaviour of one backend."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{mock.port}/_mock/config",
        json.dumps(changes).encode(),
        {"content-type": "application/json"},
    )
    with _HTTP.open(request, timeout=5) as response:
        assert response.status == 200


def config(tmp: Path, mocks: list[MockProcess], backend: str = "") -> Path:
    """The router over the fleet; `backend` goes in every backend's table."""
    return write_config(tmp, [m.url for m in mocks], KEY, extra=ROUTING, backend=backend)


def stats(mock: MockProcess) -> dict[str, Any]:
    """GET /_mock/stats of one backend."""
    with _HTTP.open(f"http://127.0.0.1:{mock.port}/_mock/stats", timeout=5) as response:
        found: dict[str, Any] = json.loads(response.read())
    return found


def faulty_hits(mock: MockProcess) -> int:
    """Inference requests the faulty backend received."""
    return sum(n for path, n in stats(mock)["by_path"].items() if path.startswith("/v1/"))


def mixed(content: str = "[mock:chunks=3] hello") -> Payload:
    """Every other request streamed."""
    return lambda n: chat(content, stream=n % 2 == 1)


async def run(
    router: RouterProcess, payload: Payload, count: int, tally: Tally | None = None
) -> Tally:
    return await drive(router.url, KEY, payload, count, workers=6, tally=tally)


def report(figures: Figures, tally: Tally, faulty: MockProcess, bound: int | None = 0) -> None:
    """The row's figures; the faulty backend must have been tried, or nothing was tested."""
    hits = faulty_hits(faulty)
    figures.add("requests", len(tally.outcomes))
    figures.add("client-visible errors", len(tally.errors), bound=bound)
    figures.add("requests the faulty backend got", hits)
    assert hits >= 1


@pytest.mark.reliability("2.1", "1 of 3 backends SIGKILLed under load")
async def test_backend_sigkilled_under_load(
    backends: list[MockProcess], tmp_path: Path, figures: Figures
) -> None:
    """SIGKILL of one backend mid-load costs no client an error, streams that had not started
    included; a stream the kill cut after its first byte ends with an error event."""
    victim = backends[1]
    tally = Tally()
    with router_process(["--config", str(config(tmp_path, backends))], tmp_path) as router:
        loader = asyncio.create_task(run(router, mixed(), 400, tally))
        for _ in range(200):  # until a quarter of the load is done
            if len(tally.outcomes) >= 100 or loader.done():
                break
            await asyncio.sleep(0.02)
        hits = faulty_hits(victim)
        victim.kill()
        after_kill = 400 - len(tally.outcomes)
        await loader
        cut = [o for o in tally.errors if o.kind == "error_event"]
        records = [await usage_record(router.url, KEY, o.request_id) for o in cut]
    unstarted = [o for o in tally.errors if o.kind != "error_event"]
    figures.add("requests", len(tally.outcomes))
    figures.add("sent after the kill", after_kill)
    figures.add("client-visible errors", len(tally.errors))
    figures.add("of them before a first byte", len(unstarted), bound=0)
    assert hits >= 1
    assert after_kill >= 200
    assert unstarted == []
    assert all(o.error_code == "upstream_stream_broken" for o in cut)
    assert all(r["partial"] is True for r in records)


@pytest.mark.reliability("2.2", "1 of 3 backends hung (accepts, never answers)")
async def test_hung_backend_under_load(
    backends: list[MockProcess], tmp_path: Path, figures: Figures
) -> None:
    """A backend that accepts and never answers costs its requests ttfb_timeout_s, then they
    are failed over: no client sees an error, and the backend is ejected."""
    configure(backends[0], directives="[mock:hang]")
    path = config(tmp_path, backends, "ttfb_timeout_s = 0.5")
    with router_process(["--config", str(path)], tmp_path) as router:
        tally = await run(router, mixed(), 120)
    report(figures, tally, backends[0])
    figures.add("slowest answer (ttfb_timeout_s 0.5)", max_ms(tally), "ms")
    assert tally.errors == []


@pytest.mark.reliability("2.3", "1 of 3 backends slow: 5 s to first byte")
async def test_slow_backend_under_load(
    backends: list[MockProcess], tmp_path: Path, figures: Figures
) -> None:
    """A backend 5 s from its first byte, behind a router whose ttfb_timeout_s is 1 s (less
    than the delay, so the test stays short): its requests fail over, no client sees an error."""
    configure(backends[2], latency_ms=5000)
    path = config(tmp_path, backends, "ttfb_timeout_s = 1.0")
    with router_process(["--config", str(path)], tmp_path) as router:
        tally = await run(router, mixed(), 120)
    report(figures, tally, backends[2])
    figures.add("slowest answer (ttfb_timeout_s 1)", max_ms(tally), "ms")
    assert tally.errors == []


def max_ms(tally: Tally) -> float:
    return round(1000 * max(o.seconds for o in tally.outcomes), 1)


@pytest.mark.reliability("2.4", "1 of 3 backends cutting its streams mid-way")
async def test_backend_cutting_streams_mid_way(
    backends: list[MockProcess], tmp_path: Path, figures: Figures
) -> None:
    """Streams a backend cuts after 2 chunks end with a terminal error event and a usage
    record marked partial; once the backend is ejected, no more streams are cut."""
    configure(backends[1], directives="[mock:break_after=2]")
    with router_process(["--config", str(config(tmp_path, backends))], tmp_path) as router:
        tally = await run(router, lambda _: chat("[mock:chunks=5] hi", stream=True), 120)
        cut = tally.errors
        records = [await usage_record(router.url, KEY, o.request_id) for o in cut]
    report(figures, tally, backends[1], bound=None)
    figures.add("ended by an error event", sum(o.kind == "error_event" for o in cut))
    figures.add("records marked partial", sum(r["partial"] is True for r in records))
    assert 1 <= len(cut) < len(tally.outcomes) // 2
    assert {(o.kind, o.error_code) for o in cut} == {("error_event", "upstream_stream_broken")}
    assert all(r["partial"] is True and r["billable"] is True for r in records)
    assert all(r["error_code"] == "upstream_stream_broken" for r in records)


@pytest.mark.reliability("2.5", "1 of 3 backends answering 500")
async def test_backend_answering_500(
    backends: list[MockProcess], tmp_path: Path, figures: Figures
) -> None:
    """Every 500 of one backend is failed over: no client sees an error."""
    configure(backends[0], fail_rate=1.0)
    with router_process(["--config", str(config(tmp_path, backends))], tmp_path) as router:
        tally = await run(router, mixed(), 150)
    report(figures, tally, backends[0])
    assert tally.errors == []


@pytest.mark.reliability("2.6", "1 of 3 backends answering 429")
async def test_backend_answering_429(
    backends: list[MockProcess], tmp_path: Path, figures: Figures
) -> None:
    """Every 429 of one backend is failed over (and the backend rests): no client sees one."""
    configure(backends[0], fail_rate=1.0, fail_status=429)
    with router_process(["--config", str(config(tmp_path, backends))], tmp_path) as router:
        tally = await run(router, mixed(), 150)
    report(figures, tally, backends[0])
    assert tally.errors == []


@pytest.mark.reliability("2.7", "1 of 3 backends answering garbage JSON")
async def test_backend_answering_garbage(
    backends: list[MockProcess], tmp_path: Path, figures: Figures
) -> None:
    """A 200 that is not JSON, or a stream whose first event is not, is failed over before the
    client sees a byte: no client sees an error."""
    configure(backends[2], directives="[mock:garbage]")
    with router_process(["--config", str(config(tmp_path, backends))], tmp_path) as router:
        tally = await run(router, mixed(), 150)
    report(figures, tally, backends[2])
    assert tally.errors == []


def embeddings(inputs: int, dimensions: int) -> dict[str, object]:
    return {"model": "m", "input": [f"text {i}" for i in range(inputs)], "dimensions": dimensions}


@pytest.mark.reliability("2.8", "backends answering 10 MB bodies")
async def test_ten_megabyte_answers(
    backends: list[MockProcess], tmp_path: Path, figures: Figures
) -> None:
    """Answers of about 10 MB (embeddings) reach every client whole; the router's memory is
    reported before and after."""
    body = embeddings(inputs=120, dimensions=4096)
    with router_process(["--config", str(config(tmp_path, backends))], tmp_path) as router:
        before = rss_mb(router.process.pid)
        sizes = await big_answers(router.url, body, count=9, workers=3)
        after = rss_mb(router.process.pid)
    figures.add("requests", len(sizes))
    figures.add("client-visible errors", sum(s is None for s in sizes), bound=0)
    figures.add("answer size", round(min(s or 0 for s in sizes) / 1e6, 1), "MB")
    figures.add("router RSS before / after", f"{before} / {after} MB")
    assert all(s is not None and s > 10_000_000 for s in sizes), sizes


async def big_answers(
    url: str, body: dict[str, object], count: int, workers: int
) -> list[int | None]:
    """The size of each embeddings answer, None for one that failed or came back short."""
    sizes: list[int | None] = []
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def worker(n: int) -> None:
            for _ in range(n):
                async with session.post(f"{url}/v1/embeddings", json=body, headers=headers) as r:
                    data = await r.read()
                ok = r.status == 200 and len(json.loads(data)["data"]) == len(body["input"])  # type: ignore[arg-type]
                sizes.append(len(data) if ok else None)

        await asyncio.gather(*(worker(count // workers) for _ in range(workers)))
    return sizes
