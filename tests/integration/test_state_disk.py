"""The router on a small, real filesystem (tmpfs) that fills up: refuse early, never drop."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from appliance.doctor.state_checks import check_state
from appliance.settings.loader import parse_settings
from tests.integration.router_harness import RouterUnderTest, chat, chat_requests, running_router
from tests.reliability import Figures
from tests.small_fs import fill, tmpfs

MB = 1024 * 1024
NO_SINK = '[usage]\nsink = "none"\n'


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "fs", 8 * MB) as mounted:
        yield mounted


async def readyz(router: RouterUnderTest) -> tuple[int, dict[str, object]]:
    async with router.session.get(f"{router.url}/v1/status/readyz") as response:
        return response.status, await response.json()


async def ask(router: RouterUnderTest, *, stream: bool = False) -> tuple[int, bytes]:
    """One chat request, read to the end: (status, whole body)."""
    async with await router.post("/v1/chat/completions", chat(stream=stream)) as response:
        return response.status, await response.read()


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 8.0) -> None:
    """Poll an async predicate until it holds (bounded)."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.mark.reliability("1.4", "state dir below its free-space reserve (8 MB tmpfs)")
async def test_low_disk_refuses_before_forwarding_then_recovers(
    small_fs: Path, figures: Figures
) -> None:
    """Below state.min_free_mb, chat requests get 503 usage_buffer_full without reaching the
    backend and readiness fails on usage_buffer; freeing space brings both back, no restart."""
    state = small_fs / "state"
    async with running_router(
        state_dir=str(state), state_extra="min_free_mb = 2", extra=NO_SINK
    ) as router:
        assert (await ask(router))[0] == 200
        filler = fill(small_fs, leave_bytes=1 * MB)

        async def refused() -> bool:
            return (await ask(router))[0] == 503

        await until(refused)
        mock = router.mocks["m0"]
        forwarded = chat_requests(mock)
        for _ in range(5):
            status, body = await ask(router)
            assert status == 503
            error = json.loads(body)["error"]
            assert (error["code"], error["type"]) == ("usage_buffer_full", "server_error")
            assert "disk" in error["message"]
        assert chat_requests(mock) == forwarded  # the backend was never called
        figures.add("refused with 503 usage_buffer_full", 5)
        figures.add("forwarded while refused", chat_requests(mock) - forwarded, bound=0)
        status, ready = await readyz(router)
        assert (status, ready["components"]["usage_buffer"]) == (503, "unhealthy")  # type: ignore[index]
        assert "free" in ready["details"]["usage_buffer"]  # type: ignore[index]

        filler.unlink()

        async def served() -> bool:
            return (await ask(router))[0] == 200

        await until(served)
        await until(lambda: _ready(router))


async def _ready(router: RouterUnderTest) -> bool:
    return (await readyz(router))[0] == 200


@pytest.mark.reliability("1.5", "state dir full at the commit (tmpfs filled to 0 bytes)")
async def test_disk_full_after_the_check_still_answers_and_keeps_the_record(
    small_fs: Path, figures: Figures
) -> None:
    """With the disk full past the free-space check, the client still gets its whole answer;
    the record waits in memory (readiness fails meanwhile) and reaches the outbox once space
    returns."""
    state = small_fs / "state"
    # No reserve: the check passes, so the commit itself meets the full disk.
    async with running_router(
        state_dir=str(state), state_extra="min_free_mb = 0", extra=NO_SINK
    ) as router:
        assert (await ask(router))[0] == 200
        filler = fill(small_fs)
        try:
            status, body = await ask(router, stream=True)
        except aiohttp.ClientError as exc:
            pytest.fail(f"the connection was dropped instead of answered: {exc!r}")
        assert status == 200
        assert body.endswith(b"data: [DONE]\n\n")
        recorder = router.state.usage.recorder
        assert recorder.held == 1
        status, ready = await readyz(router)
        assert (status, ready["components"]["usage_buffer"]) == (503, "unhealthy")  # type: ignore[index]
        assert "memory" in ready["details"]["usage_buffer"]  # type: ignore[index]
        forwarded = chat_requests(router.mocks["m0"])
        assert (await ask(router))[0] == 503  # no new work while a record waits in memory
        assert chat_requests(router.mocks["m0"]) == forwarded

        filler.unlink()

        async def written() -> bool:
            return recorder.held == 0

        await until(written)
        await until(lambda: _ready(router))
        assert (await ask(router))[0] == 200
        figures.add("answered in full on a full disk", 1)
        figures.add("records still held after space returned", recorder.held, bound=0)


async def test_a_small_state_dir_does_not_fill_by_itself(tmp_path: Path) -> None:
    """On a 2 MiB state dir, 300 requests all succeed: the outbox's WAL stays bounded."""
    with tmpfs(tmp_path / "fs", 2 * MB) as mounted:
        wal = mounted / "state" / "outbox.sqlite-wal"
        largest = 0
        async with running_router(
            state_dir=str(mounted / "state"), state_extra="min_free_mb = 0.25", extra=NO_SINK
        ) as router:
            for n in range(300):
                status, _ = await ask(router, stream=n % 2 == 1)
                assert status == 200, f"request {n} got {status}"
                largest = max(largest, wal.stat().st_size if wal.exists() else 0)
        assert largest <= 1 * MB


async def test_doctor_fails_a_state_dir_under_its_minimum(tmp_path: Path) -> None:
    """doctor's disk row counts state.min_free_mb and the working space in what the state
    dir needs, and under the reserve says the router refuses every request."""
    with tmpfs(tmp_path / "fs", 8 * MB) as mounted:
        settings = parse_settings(
            f'[state]\ndir = "{mounted / "state"}"\nmin_free_mb = 4\n\n'
            '[usage]\nsink = "none"\nmax_buffer_mb = 1\n'
        )
        [disk] = [row for row in await check_state(settings, 3.0) if row.check == "disk"]
        assert disk.status == "fail"
        assert "may need 21 MB" in disk.detail  # 1 (outbox) + 4 (reserve) + 16 (working)
        fill(mounted, leave_bytes=2 * MB)
        [disk] = [row for row in await check_state(settings, 3.0) if row.check == "disk"]
        assert disk.status == "fail"
        assert "refuses every request" in disk.detail
