"""HttpBudgetAuthority against a real aiohttp server playing the external budget service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp import web

from appliance.limits.budget_service import HttpBudgetAuthority
from appliance.limits.ports import BudgetStatus, LimiterBackendError
from tests.services import free_port

SECRET = "Bearer s3cr3t-budget-token"
END = 1_767_225_600.0  # 2026-01-01T00:00:00Z
Reply = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class BudgetServer:
    """Records every request's raw path and Authorization header; `reply` decides the answer."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.auth: list[str | None] = []
        self.release = asyncio.Event()  # set at teardown so slow handlers finish
        self.port = 0
        self.reply: Reply = self.ok

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.raw_path)
        self.auth.append(request.headers.get("Authorization"))
        return await self.reply(request)

    async def ok(self, _request: web.Request) -> web.StreamResponse:
        return web.json_response({"limit_usd": 100, "spent_usd": 12.5, "period_end": END})

    async def slow(self, request: web.Request) -> web.StreamResponse:
        await self.release.wait()
        return await self.ok(request)


@pytest.fixture
async def server() -> AsyncIterator[BudgetServer]:
    fake = BudgetServer()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)  # port 0: the kernel picks a free one
    await site.start()
    fake.port = runner.addresses[0][1]
    yield fake
    fake.release.set()
    await runner.cleanup()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def authority(server: BudgetServer, clock: FakeClock) -> AsyncIterator[HttpBudgetAuthority]:
    session = aiohttp.ClientSession()
    budgets = HttpBudgetAuthority(
        session, server.url, ttl_s=30.0, timeout_s=0.5,
        headers={"Authorization": SECRET}, monotonic=clock,
    )  # fmt: skip
    yield budgets
    await budgets.close()
    await session.close()


def answering(body: object, status: int = 200) -> Reply:
    async def reply(request: web.Request) -> web.StreamResponse:
        if isinstance(body, bytes):
            return web.Response(body=body, status=status, content_type="application/json")
        return web.json_response(body, status=status)

    return reply


async def test_numeric_period_end_and_headers(
    server: BudgetServer, authority: HttpBudgetAuthority
) -> None:
    """A 200 answer with unix-seconds period_end becomes a BudgetStatus; headers are sent."""
    assert await authority.status("acme") == BudgetStatus(100.0, 12.5, END)
    assert server.hits == ["/v1/budgets/acme"]
    assert server.auth == [SECRET]


@pytest.mark.parametrize(
    ("period_end", "expected"),
    [
        ("2026-01-01T00:00:00Z", END),
        ("2026-01-01T00:00:00+00:00", END),
        ("2026-01-01T02:00:00+02:00", END),  # the offset is honoured
        ("2026-01-01T00:00:00", END),  # no offset: UTC
        ("2026-01-01", END),
        (1_767_225_600, END),
        (1_767_225_600.5, END + 0.5),
    ],
)
async def test_period_end_accepts_iso_8601_or_unix_seconds(
    server: BudgetServer, authority: HttpBudgetAuthority, period_end: object, expected: float
) -> None:
    """period_end may be an ISO-8601 string (offset honoured, none = UTC) or unix seconds."""
    server.reply = answering({"limit_usd": 5, "spent_usd": 0, "period_end": period_end, "x": 1})
    status = await authority.status("acme")
    assert status.period_end == expected
    assert datetime.fromtimestamp(status.period_end, UTC).year in (2025, 2026)


async def test_answers_are_cached_per_org_for_the_ttl(
    server: BudgetServer, authority: HttpBudgetAuthority, clock: FakeClock
) -> None:
    """Within ttl_s an org's status is served from the cache; other orgs have their own entry."""
    for _ in range(5):
        await authority.status("acme")
    clock.now += 29.9
    await authority.status("acme")
    await authority.status("globex")
    assert server.hits == ["/v1/budgets/acme", "/v1/budgets/globex"]
    clock.now += 0.1  # acme's entry is now exactly ttl_s old
    server.reply = answering({"limit_usd": 100, "spent_usd": 50, "period_end": END})
    assert (await authority.status("acme")).spent_usd == 50.0
    assert server.hits.count("/v1/budgets/acme") == 2


async def test_concurrent_misses_make_one_call(
    server: BudgetServer, authority: HttpBudgetAuthority
) -> None:
    """50 concurrent status() calls for one uncached org share a single HTTP request."""

    async def delayed(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.1)
        return await server.ok(request)

    server.reply = delayed
    results = await asyncio.gather(*(authority.status("acme") for _ in range(50)))
    assert server.hits == ["/v1/budgets/acme"]
    assert set(results) == {BudgetStatus(100.0, 12.5, END)}


async def test_a_caller_giving_up_does_not_cancel_the_shared_call(
    server: BudgetServer, authority: HttpBudgetAuthority
) -> None:
    """Cancelling the caller that started a fetch leaves it running for the other waiters."""
    server.reply = server.slow
    first = asyncio.create_task(authority.status("acme"))
    second = asyncio.create_task(authority.status("acme"))
    await asyncio.sleep(0.05)
    first.cancel()
    server.release.set()
    assert await second == BudgetStatus(100.0, 12.5, END)
    with pytest.raises(asyncio.CancelledError):
        await first
    assert len(server.hits) == 1


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (answering({"error": "boom"}, status=500), "HTTP status 500"),
        (answering({"limit_usd": 1}, status=404), "HTTP status 404"),
        (answering(b"not json"), "malformed"),
        (answering({"limit_usd": 1, "spent_usd": 0}), "malformed"),  # period_end missing
        (answering({"limit_usd": "1", "spent_usd": 0, "period_end": END}), "malformed"),
        (answering({"limit_usd": True, "spent_usd": 0, "period_end": END}), "malformed"),
        (answering({"limit_usd": -1, "spent_usd": 0, "period_end": END}), "malformed"),
        (answering({"limit_usd": 1, "spent_usd": 0, "period_end": "next month"}), "malformed"),
        (answering(b'{"limit_usd": 1e999, "spent_usd": 0, "period_end": 1}'), "malformed"),
        (answering([1, 2, 3]), "malformed"),
        (answering(b" " * 70_000), "larger than"),
    ],
    ids=[
        "500", "404", "not-json", "missing-field", "string-number", "bool", "negative-limit",
        "bad-iso", "infinite", "array", "huge",
    ],
)  # fmt: skip
async def test_bad_answers_are_backend_errors(
    server: BudgetServer, authority: HttpBudgetAuthority, reply: Reply, match: str
) -> None:
    """A non-200 status or a body off the contract raises LimiterBackendError naming the org,
    never the token."""
    server.reply = reply
    with pytest.raises(LimiterBackendError, match=match) as caught:
        await authority.status("acme")
    message = str(caught.value)
    assert "'acme'" in message
    assert "s3cr3t" not in message
    assert server.url not in message


async def test_redirects_are_not_followed(
    server: BudgetServer, authority: HttpBudgetAuthority
) -> None:
    """A 302 is a failure, and its Location (which would answer fine) is never requested."""

    async def redirect(request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/elsewhere"):
            return await server.ok(request)
        raise web.HTTPFound("/elsewhere/v1/budgets/acme")

    server.reply = redirect
    with pytest.raises(LimiterBackendError, match="HTTP status 302"):
        await authority.status("acme")
    assert server.hits == ["/v1/budgets/acme"]


async def test_slow_service_times_out(server: BudgetServer, clock: FakeClock) -> None:
    """A service that does not answer within timeout_s fails at the timeout."""
    server.reply = server.slow
    async with aiohttp.ClientSession() as session:
        budgets = HttpBudgetAuthority(session, server.url, 30.0, 0.2, monotonic=clock)
        started = time.monotonic()
        with pytest.raises(LimiterBackendError, match=r"no answer within 0\.2 s"):
            await budgets.status("acme")
        assert time.monotonic() - started < 1.0
        await budgets.close()


async def test_unreachable_service_is_a_backend_error() -> None:
    """Nothing listening on the port: a connect error becomes LimiterBackendError at once."""
    async with aiohttp.ClientSession() as session:
        budgets = HttpBudgetAuthority(session, f"http://127.0.0.1:{free_port()}", 30.0, 2.0)
        with pytest.raises(LimiterBackendError, match="request failed: Client"):
            await budgets.status("acme")
        await budgets.close()


async def test_failures_are_cached_briefly(
    server: BudgetServer, authority: HttpBudgetAuthority, clock: FakeClock
) -> None:
    """After a failure, calls within 1 s fail without a request; after it the service is
    asked again."""
    server.reply = answering({}, status=503)
    for _ in range(3):
        with pytest.raises(LimiterBackendError, match="503"):
            await authority.status("acme")
    assert len(server.hits) == 1
    clock.now += 0.99
    with pytest.raises(LimiterBackendError, match="recent failure"):
        await authority.status("acme")
    assert len(server.hits) == 1
    server.reply = server.ok
    clock.now += 0.02
    assert await authority.status("acme") == BudgetStatus(100.0, 12.5, END)
    assert len(server.hits) == 2


@pytest.mark.parametrize(
    ("org", "raw_path"),
    [
        ("a/b", "/api/v1/budgets/a%2Fb"),
        ("..", "/api/v1/budgets/%2E%2E"),
        ("../../admin", "/api/v1/budgets/%2E%2E%2F%2E%2E%2Fadmin"),
        ("x?y#z", "/api/v1/budgets/x%3Fy%23z"),
        ("ümlaut org", "/api/v1/budgets/%C3%BCmlaut%20org"),
    ],
)
async def test_org_ids_stay_one_path_segment(
    server: BudgetServer, clock: FakeClock, org: str, raw_path: str
) -> None:
    """An org id is percent-encoded into one segment under the base URL's own path."""
    async with aiohttp.ClientSession() as session:
        budgets = HttpBudgetAuthority(session, server.url + "/api/", 30.0, 2.0, monotonic=clock)
        await budgets.status(org)
        await budgets.close()
    assert server.hits == [raw_path]


async def test_session_factory_is_owned_and_closed(server: BudgetServer) -> None:
    """Given a factory, the authority makes its session on first use and closes it."""
    made: list[aiohttp.ClientSession] = []

    def factory() -> aiohttp.ClientSession:
        made.append(aiohttp.ClientSession())
        return made[-1]

    budgets = HttpBudgetAuthority(factory, server.url, 30.0, 2.0)
    assert made == []
    await budgets.status("acme")
    await budgets.close()
    assert len(made) == 1
    assert made[0].closed


def test_base_url_must_be_absolute_http() -> None:
    """A base URL without http(s) scheme and host is refused at construction."""
    for bad in ("ftp://h/x", "/v1", "budget.internal:8080"):
        with pytest.raises(ValueError, match="absolute http"):
            HttpBudgetAuthority(aiohttp.ClientSession, bad, 30.0, 1.0)
