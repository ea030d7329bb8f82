"""BudgetAuthority over HTTP: an external service owns each org's monthly limit and spend.

Contract: `GET {base_url}/v1/budgets/{org}` (org percent-encoded as one path segment) answers
200 with JSON `{"limit_usd": number, "spent_usd": number, "period_end": P}`, where P is unix
seconds (a number) or an ISO-8601 string (an offset is honoured, none means UTC). Unknown
fields are ignored. Anything else (no answer within timeout_s, a non-200 status, redirects
included since they are never followed, a body that is not that JSON) is LimiterBackendError.

An answer is cached per org for ttl_s; a failure for failure_ttl_s (default 1 s), so a dead
service sees about one call per org per second, not one per request. Concurrent misses for
one org share a single HTTP call.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

import aiohttp
import msgspec
import yarl

from appliance.limits.ports import BudgetStatus, LimiterBackendError

_MAX_BODY = 64 * 1024


class _Answer(msgspec.Struct, frozen=True):
    limit_usd: float
    spent_usd: float
    period_end: float | str


@dataclass(frozen=True, slots=True)
class _Entry:
    expires_at: float  # monotonic seconds
    status: BudgetStatus | None
    error: str | None

    def unwrap(self) -> BudgetStatus:
        if self.status is None:
            raise LimiterBackendError(f"{self.error} (recent failure, not retried yet)")
        return self.status


class _BadAnswer(Exception):
    """The service answered, but not with what the contract promises."""


class HttpBudgetAuthority:
    """Budgets from an HTTP service; `await close()` when done.

    `session` is an aiohttp.ClientSession the caller owns, or a factory called on first use
    whose session this object owns and closes. `headers` (e.g. Authorization) are sent on
    every call and never appear in errors.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | Callable[[], aiohttp.ClientSession],
        base_url: str,
        ttl_s: float,
        timeout_s: float,
        *,
        failure_ttl_s: float = 1.0,
        headers: Mapping[str, str] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        url = yarl.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("budget service base_url must be an absolute http(s) URL")
        self._base = str(url).rstrip("/")
        self._session = session if isinstance(session, aiohttp.ClientSession) else None
        self._factory = None if isinstance(session, aiohttp.ClientSession) else session
        self._ttl_s = ttl_s
        # Never longer than a success is cached: a failure must not outlive an answer.
        self._failure_ttl_s = min(failure_ttl_s, ttl_s)
        self._timeout_s = timeout_s
        self._headers = dict(headers or {})
        self._monotonic = monotonic
        self._cache: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Task[BudgetStatus]] = {}

    def url_for(self, org: str) -> yarl.URL:
        """The request URL: the org is one percent-encoded segment, so '/' or '..' stay in it."""
        # quote() leaves '.' alone, and yarl would resolve a '..' segment; %2E is inert.
        segment = quote(org, safe="").replace(".", "%2E")
        return yarl.URL(f"{self._base}/v1/budgets/{segment}", encoded=True)

    async def status(self, org: str) -> BudgetStatus:
        """The org's budget, from the cache when fresh; LimiterBackendError if unavailable."""
        entry = self._cache.get(org)
        if entry is not None and self._monotonic() < entry.expires_at:
            return entry.unwrap()
        task = self._inflight.get(org)
        if task is None:
            task = asyncio.create_task(self._refresh(org), name=f"budget-{org}")
            self._inflight[org] = task
            task.add_done_callback(lambda done: self._settled(org, done))
        # shield: a caller that gives up must not cancel the call others are waiting for.
        return await asyncio.shield(task)

    async def close(self) -> None:
        """Cancel calls in flight and close the session if this object made it."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._factory is not None and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def _refresh(self, org: str) -> BudgetStatus:
        try:
            status = await self._fetch(org)
        except LimiterBackendError as exc:
            expires = self._monotonic() + self._failure_ttl_s
            self._cache[org] = _Entry(expires, None, str(exc))
            raise
        self._cache[org] = _Entry(self._monotonic() + self._ttl_s, status, None)
        return status

    def _settled(self, org: str, task: asyncio.Task[BudgetStatus]) -> None:
        if self._inflight.get(org) is task:
            del self._inflight[org]
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" noise when every caller left

    async def _fetch(self, org: str) -> BudgetStatus:
        # Messages name the org and the status or failure kind, never a URL or a header.
        where = f"budget service for org {org!r}"
        try:
            async with asyncio.timeout(self._timeout_s):
                status_code, body = await self._get(org)
        except TimeoutError as exc:
            raise LimiterBackendError(f"{where}: no answer within {self._timeout_s} s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise LimiterBackendError(f"{where}: request failed: {type(exc).__name__}") from exc
        except _BadAnswer as exc:
            raise LimiterBackendError(f"{where}: {exc}") from exc
        if status_code != 200:
            raise LimiterBackendError(f"{where}: HTTP status {status_code}")
        try:
            return _decode(body)
        except _BadAnswer as exc:
            raise LimiterBackendError(f"{where}: malformed answer: {exc}") from exc

    async def _get(self, org: str) -> tuple[int, bytes]:
        session = self._session_now()
        async with session.get(
            self.url_for(org), headers=self._headers, allow_redirects=False
        ) as response:
            if response.status != 200:
                return response.status, b""
            body = bytearray()
            async for chunk in response.content.iter_any():
                body += chunk
                if len(body) > _MAX_BODY:
                    raise _BadAnswer(f"answer larger than {_MAX_BODY} bytes")
            return response.status, bytes(body)

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            assert self._factory is not None  # one of the two is always set
            self._session = self._factory()
        return self._session


def _decode(body: bytes) -> BudgetStatus:
    try:
        answer = msgspec.json.decode(body, type=_Answer)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise _BadAnswer(str(exc)) from exc
    period_end = _period_end(answer.period_end)
    for name, value in (
        ("limit_usd", answer.limit_usd),
        ("spent_usd", answer.spent_usd),
        ("period_end", period_end),
    ):
        if not math.isfinite(value):
            raise _BadAnswer(f"{name} is not a finite number")
    if answer.limit_usd < 0:
        raise _BadAnswer("limit_usd is negative")
    return BudgetStatus(answer.limit_usd, answer.spent_usd, period_end)


def _period_end(raw: float | str) -> float:
    if not isinstance(raw, str):
        return raw
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise _BadAnswer("period_end is neither unix seconds nor an ISO-8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
