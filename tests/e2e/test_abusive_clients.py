"""Row 4 of the reliability matrix: slow and abusive clients against a real router process.

Each attack runs on raw sockets; the figures are the statuses the attackers got, the latency
(p99) of normal clients served at the same time, and the router's resident memory before and
after (VmRSS). The protocol details of each refusal (error shape, request id, close) are
tested in tests/integration/test_http_edges.py and test_router_limits.py.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from typing import TypeVar

import msgspec
import pytest

from appliance.server.lingering_close import LINGER_BYTES
from tests.e2e.cli import RouterProcess, router_process
from tests.e2e.traffic import Tally, chat, drive, rss_mb, write_config
from tests.integration.test_router_limits import read_all
from tests.reliability import Figures

KEY = "rk-e2e-abusive-clients"
MAX_BODY = 1024 * 1024
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
WIRE_TIMEOUT_S = 15.0
# Loose on purpose: allocator noise and first-use caches, not a bodies' worth (10-100 MB).
RSS_GROWTH_MB = 32.0
T = TypeVar("T")


@pytest.fixture(scope="module")
def router(mock_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    """One router process for the module; short head and body deadlines keep attacks short."""
    tmp = tmp_path_factory.mktemp("abuse")
    limits = (
        f"max_body_bytes = {MAX_BODY}\nheader_timeout_s = {HEADER_TIMEOUT_S}\n"
        f"body_read_timeout_s = {BODY_TIMEOUT_S}"
    )
    path = write_config(tmp, [mock_url], KEY, server=limits)
    with router_process(["--config", str(path)], tmp) as running:
        yield running


def status_of(answer: bytes) -> int:
    """The status of the first response in `answer`; 0 when the router sent none."""
    if not answer.startswith(b"HTTP/1.1 "):
        return 0
    return int(answer.split(b" ", 2)[1])


def head(framing: str, extra: str = "") -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {KEY}\r\n"
        f"content-type: application/json\r\n{framing}\r\n{extra}\r\n"
    ).encode()


async def send_then_read(port: int, parts: AsyncIterator[bytes]) -> tuple[int, int]:
    """Send `parts` until the router answers or closes; (status, bytes sent)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.create_task(read_all(reader))
    sent = 0
    try:
        async for part in parts:
            if answer.done():
                break
            try:
                writer.write(part)
                await writer.drain()
            except ConnectionError:
                break  # the router answered and closed: the behaviour under test
            sent += len(part)
        return status_of(await asyncio.wait_for(answer, WIRE_TIMEOUT_S)), sent
    finally:
        answer.cancel()
        writer.close()


async def trickle(data: bytes, gap_s: float) -> AsyncIterator[bytes]:
    """`data` one byte per `gap_s` (at most 20 s of it)."""
    for byte in data[: int(20 / gap_s)]:
        yield bytes([byte])
        await asyncio.sleep(gap_s)


async def at_once(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def under_attack(router: RouterProcess, attack: Awaitable[T]) -> tuple[T, Tally]:
    """Run `attack` while two normal clients send chat requests; the attack's result and the
    normal clients' tally (bounded: at most 2,000 requests)."""
    attacking = asyncio.ensure_future(attack)
    normal = Tally()
    for _ in range(100):  # batches of 20, until the attack is over
        await drive(router.url, KEY, lambda _: chat(), 20, workers=2, tally=normal)
        if attacking.done():
            break
    return await attacking, normal


def report(figures: Figures, statuses: Counter[int], before: float, router: RouterProcess) -> None:
    """Statuses seen and the router's memory, whose growth is held to RSS_GROWTH_MB."""
    after = rss_mb(router.process.pid)
    figures.add("statuses seen", ", ".join(f"{n} x {s}" for s, n in sorted(statuses.items())))
    figures.add("router RSS before / after", f"{before} / {after} MB")
    figures.add("RSS growth", round(after - before, 1), "MB", bound=RSS_GROWTH_MB)
    assert after - before <= RSS_GROWTH_MB


def report_normal(figures: Figures, normal: Tally) -> None:
    figures.add("normal requests during the attack", len(normal.outcomes))
    figures.add("normal clients' errors", len(normal.errors), bound=0)
    figures.add("normal clients' p99", normal.p99_ms(), "ms")
    assert normal.errors == []


async def gather_all(attacks: Sequence[Awaitable[T]]) -> list[T]:
    return list(await asyncio.gather(*attacks))


@pytest.mark.reliability("4.1", "slowloris: 200 connections, one header byte a second")
async def test_slowloris(router: RouterProcess, figures: Figures) -> None:
    """200 connections trickling a head one byte a second each get 408 and a close at
    header_timeout_s (1 s here), while normal clients are served."""
    before = rss_mb(router.process.pid)
    request = b"GET /v1/models HTTP/1.1\r\nhost: t\r\nx-slow: " + b"a" * 100
    attacks = [send_then_read(router.port, trickle(request, 1.0)) for _ in range(200)]
    results, normal = await under_attack(router, gather_all(attacks))
    statuses = Counter(status for status, _ in results)
    report(figures, statuses, before, router)
    report_normal(figures, normal)
    assert statuses == {408: 200}


@pytest.mark.reliability("4.2", "slow body: 50 bodies at one byte a second")
async def test_slow_body(router: RouterProcess, figures: Figures) -> None:
    """Bodies trickling in one byte a second get 408 at body_read_timeout_s (1 s here), while
    normal clients are served."""
    before = rss_mb(router.process.pid)
    body = msgspec.json.encode(chat())
    request = head(f"content-length: {len(body)}")
    attacks = [
        send_then_read(router.port, chain(at_once(request), trickle(body, 1.0))) for _ in range(50)
    ]
    results, normal = await under_attack(router, gather_all(attacks))
    statuses = Counter(status for status, _ in results)
    report(figures, statuses, before, router)
    report_normal(figures, normal)
    assert statuses == {408: 50}


async def chain(*parts: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        async for item in part:
            yield item


@pytest.mark.reliability("4.3", "a 100 KB header")
async def test_hundred_kilobyte_header(router: RouterProcess, figures: Figures) -> None:
    """One 100 KB header is refused with 431 (the limit is max_header_bytes, 16 KiB)."""
    before = rss_mb(router.process.pid)
    request = b"GET /v1/models HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 100_000 + b"\r\n\r\n"
    status, _ = await send_then_read(router.port, at_once(request))
    report(figures, Counter([status]), before, router)
    assert status == 431


@pytest.mark.reliability("4.4", "5,000 headers")
async def test_five_thousand_headers(router: RouterProcess, figures: Figures) -> None:
    """5,000 small headers are refused with 431, as their bytes pass max_header_bytes."""
    before = rss_mb(router.process.pid)
    many = b"".join(b"x-h%d: v\r\n" % n for n in range(5000))
    request = b"GET /v1/models HTTP/1.1\r\nhost: t\r\n" + many + b"\r\n"
    status, _ = await send_then_read(router.port, at_once(request))
    report(figures, Counter([status]), before, router)
    assert status == 431


async def zeros(total: int, piece: int = 64 * 1024) -> AsyncIterator[bytes]:
    """`total` bytes in pieces, made one piece at a time (never the whole body)."""
    block = b" " * piece
    for _ in range(total // piece):
        yield block


async def chunked(total: int, piece: int = 64 * 1024) -> AsyncIterator[bytes]:
    """A chunked body of `total` bytes, chunk by chunk, never ending with the last chunk."""
    async for block in zeros(total, piece):
        yield b"%x\r\n%s\r\n" % (len(block), block)


async def big_bodies(
    router: RouterProcess, figures: Figures, bodies: list[AsyncIterator[bytes]]
) -> list[tuple[int, int]]:
    """One connection per body, all at once, normal clients alongside; the figures."""
    before = rss_mb(router.process.pid)
    attacks = [send_then_read(router.port, body) for body in bodies]
    results, normal = await under_attack(router, gather_all(attacks))
    report(figures, Counter(s for s, _ in results), before, router)
    most = max(sent for _, sent in results)
    figures.add("most bytes one sender got out", round(most / 1e6, 1), "MB")
    report_normal(figures, normal)
    return results


@pytest.mark.reliability("4.5", "10 MB bodies")
async def test_ten_megabyte_bodies(router: RouterProcess, figures: Figures) -> None:
    """Four 10 MB bodies (declared by Content-Length) get 413 from the head alone, while
    normal clients are served."""
    size = 10 * 1024 * 1024
    bodies = [chain(at_once(head(f"content-length: {size}")), zeros(size)) for _ in range(4)]
    results = await big_bodies(router, figures, bodies)
    assert [s for s, _ in results] == [413] * 4


@pytest.mark.reliability("4.6", "100 MB bodies, streamed")
async def test_hundred_megabyte_bodies(router: RouterProcess, figures: Figures) -> None:
    """Two 100 MB bodies streamed, one declared by Content-Length and one chunked, get 413;
    the router stops them at the limit and drops at most LINGER_BYTES more while the client
    reads its answer: neither sender gets a third of its body out (the socket buffers hold a
    few MB more)."""
    size = 100 * 1024 * 1024
    declared = chain(at_once(head(f"content-length: {size}")), zeros(size))
    streamed = chain(at_once(head("transfer-encoding: chunked")), chunked(size))
    results = await big_bodies(router, figures, [declared, streamed])
    assert [s for s, _ in results] == [413, 413]
    assert all(sent < MAX_BODY + LINGER_BYTES + 12 * 1024 * 1024 for _, sent in results), results


@pytest.mark.reliability("4.7", "a chunked body past the limit")
async def test_chunked_body_past_the_limit(router: RouterProcess, figures: Figures) -> None:
    """A chunked body one chunk past max_body_bytes gets 413."""
    before = rss_mb(router.process.pid)
    attack = chain(at_once(head("transfer-encoding: chunked")), chunked(MAX_BODY + 64 * 1024))
    status, _ = await send_then_read(router.port, attack)
    report(figures, Counter([status]), before, router)
    assert status == 413


def answers_of(raw: bytes) -> list[tuple[int, dict[bytes, bytes]]]:
    """(status, headers) of each HTTP/1.1 response in `raw`, bodies sized by Content-Length."""
    found = []
    for _ in range(1000):
        if not raw:
            break
        head_bytes, _, rest = raw.partition(b"\r\n\r\n")
        status_line, *lines = head_bytes.split(b"\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(b":") for x in lines)}
        found.append((int(status_line.split()[1]), headers))
        raw = rest[int(headers.get(b"content-length", b"0")) :]
    return found


async def exchange(port: int, data: bytes) -> list[tuple[int, dict[bytes, bytes]]]:
    """Send `data` at once; every answer until the router closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(read_all(reader), WIRE_TIMEOUT_S)
    finally:
        writer.close()
    return answers_of(raw)


@pytest.mark.reliability("4.8", "HTTP pipelining: 50 requests in one write")
async def test_pipelining(router: RouterProcess, figures: Figures) -> None:
    """50 chat requests sent back to back on one connection are all answered, in order."""
    before = rss_mb(router.process.pid)
    body = msgspec.json.encode(chat())
    requests = [
        head(f"content-length: {len(body)}", f"x-request-id: pipelined-{n:02}\r\n") + body
        for n in range(50)
    ]
    requests[-1] = requests[-1].replace(b"host: t\r\n", b"host: t\r\nconnection: close\r\n")
    answers = await exchange(router.port, b"".join(requests))
    report(figures, Counter(status for status, _ in answers), before, router)
    assert [status for status, _ in answers] == [200] * 50
    assert [h[b"x-request-id"] for _, h in answers] == [b"pipelined-%02d" % n for n in range(50)]


def smuggling(framing: bytes, body: bytes) -> bytes:
    """A chat POST with `framing` headers, then a second request a lenient parser would run."""
    smuggled = f"GET /v1/models HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {KEY}\r\n\r\n"
    return (
        (
            f"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {KEY}\r\n"
            "content-type: application/json\r\n"
        ).encode()
        + framing
        + b"\r\n"
        + body
        + smuggled.encode()
    )


def smuggling_attempts() -> dict[str, bytes]:
    body = msgspec.json.encode(chat())
    wrapped = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    length = len(wrapped)
    return {
        "CL.TE": smuggling(
            b"content-length: %d\r\ntransfer-encoding: chunked\r\n" % length, wrapped
        ),
        "TE.CL": smuggling(b"transfer-encoding: chunked\r\ncontent-length: 4\r\n", wrapped),
        "TE.TE": smuggling(b"transfer-encoding: chunked\r\ntransfer-encoding: x\r\n", wrapped),
        "TE xchunked": smuggling(b"transfer-encoding: xchunked\r\n", wrapped),
        "TE space before colon": smuggling(b"transfer-encoding : chunked\r\n", wrapped),
        "TE vertical tab": smuggling(b"transfer-encoding:\x0bchunked\r\n", wrapped),
        "TE chunked twice": smuggling(b"transfer-encoding: chunked, chunked\r\n", wrapped),
        "CL.CL differing": smuggling(
            b"content-length: %d\r\ncontent-length: 3\r\n" % length, wrapped
        ),
        "CL with a sign": smuggling(b"content-length: +%d\r\n" % len(body), body),
    }


@pytest.mark.reliability("4.9", "CL+TE request smuggling attempts")
async def test_request_smuggling(router: RouterProcess, figures: Figures) -> None:
    """Each ambiguous framing (CL.TE, TE.CL, TE.TE, obfuscated TE, two CLs, a signed CL) gets
    one 400 and a close: the request hidden behind it is never run."""
    before = rss_mb(router.process.pid)
    seen = {name: await exchange(router.port, data) for name, data in smuggling_attempts().items()}
    statuses = Counter(status for answers in seen.values() for status, _ in answers)
    report(figures, statuses, before, router)
    figures.add("attempts", len(seen))
    assert {name: [s for s, _ in answers] for name, answers in seen.items()} == {
        name: [400] for name in seen
    }
