"""Forward one inference request: decide, send, fail over before the first byte, relay.

A failed attempt (connect error, timeout to first byte, a 5xx, 3xx or 429, a 2xx that is not
a JSON object, a JSON answer that breaks while being read, a stream that fails before its
first event) is retried on another backend while the retry budget allows. Once a stream's
first byte is on its way to the client, it is never retried.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from appliance.errors import (
    NoBackendAvailable,
    RouterError,
    UpstreamRateLimited,
)
from appliance.routing.control import OverrideBook
from appliance.routing.engine import Decision, decide
from appliance.routing.ports import RoutingObserver
from appliance.routing.registry import Registry
from appliance.routing.retry_budget import RetryBudget
from appliance.routing.selection import ModelRoute
from appliance.telemetry.logging import get_logger
from appliance.telemetry.spans import AttemptSpan, RequestTrace
from appliance.upstream.dialect import dialect_of
from appliance.upstream.model_name import ModelName
from appliance.upstream.payload import InferenceRequest, render_upstream
from appliance.upstream.ports import BackendClient, UpstreamResponse
from appliance.upstream.relay import (
    ProgressCallback,
    Relayed,
    UsageCallback,
    relay_stream,
    relay_whole,
)
from appliance.upstream.usage import Usage
from appliance.upstream.verdict import UPSTREAM_STATUS, judge_whole

_PANIC_LOG_INTERVAL_S = 10.0
_log = get_logger("routerctl.routing")

DecisionCallback = Callable[[Decision, int], None]  # (decision, attempt number from 0)


@dataclass(frozen=True, slots=True)
class RoutingParts:
    registry: Registry
    book: OverrideBook
    budget: RetryBudget
    observer: RoutingObserver
    monotonic: Callable[[], float]
    max_retries: int


class Forwarder:
    def __init__(self, client: BackendClient, routing: RoutingParts) -> None:
        self._client = client
        self._r = routing
        self._rng = random.Random()
        self._panic_logged: dict[str, float] = {}

    async def forward(
        self,
        request: InferenceRequest,
        route: ModelRoute,
        request_id: str,
        hooks: RequestHooks,
    ) -> Relayed:
        r = self._r
        r.budget.record_request(r.monotonic())
        tried: list[str] = []
        last_error: RouterError | None = None
        for attempt in range(1 + r.max_retries):
            if attempt and not r.budget.try_retry(r.monotonic()):
                break
            decision = self._decide(route, tried, last_error, hooks.trace)
            if decision is None:
                break
            if attempt:
                r.observer.failover(tried[-1], decision.target.backend_id, _reason(last_error))
            hooks.on_decision(decision, attempt)
            relayed, last_error = await self._attempt(
                request, decision, request_id, hooks, attempt + 1
            )
            if relayed is not None:
                return relayed
            tried.append(decision.target.backend_id)
        assert last_error is not None
        raise last_error

    def _decide(
        self,
        route: ModelRoute,
        tried: list[str],
        last: RouterError | None,
        trace: RequestTrace | None,
    ) -> Decision | None:
        r = self._r
        if trace is not None:
            trace.step("routing")  # a raise leaves it open: the trace ends it failed
        started = r.monotonic()
        try:
            decision = decide(
                route, r.registry, r.book.active(), tried=tried, now=started, rng=self._rng
            )
        except NoBackendAvailable:
            if last is not None:
                if trace is not None:
                    trace.step_done()
                return None  # every backend tried: answer with the last real failure
            raise
        r.observer.decision(r.monotonic() - started)
        if trace is not None:
            trace.routed(decision)
        if decision.panic:
            self._log_panic(route.name, started)
        return decision

    def _log_panic(self, model: str, now: float) -> None:
        # Once per model per interval: panic is a state, not an event per request.
        if now - self._panic_logged.get(model, -_PANIC_LOG_INTERVAL_S) >= _PANIC_LOG_INTERVAL_S:
            self._panic_logged[model] = now
            _log.warning("panic_mode", model=model, detail="no healthy backend; using all")

    async def _attempt(
        self,
        request: InferenceRequest,
        decision: Decision,
        request_id: str,
        hooks: RequestHooks,
        number: int,
    ) -> tuple[Relayed | None, RouterError | None]:
        """One try on one backend: the relayed answer, or the error to fail over from."""
        backend = decision.target.backend_id
        upstream_model = decision.target.upstream_model
        body = render_upstream(request, upstream_model)
        dialect = dialect_of(request.endpoint)
        # The client hears back the model name it asked for, not the backend's.
        renamed = (
            None if upstream_model == request.model else ModelName(request.model, upstream_model)
        )
        span, trace_headers = None, hooks.trace_headers
        if hooks.trace is not None:
            span = hooks.trace.attempt(decision, self._client.address(backend), number)
            trace_headers = span.headers
        ledger = _Ledger(self._r, backend, decision.kind.value, span)
        try:
            upstream = await self._client.post(
                backend, request.endpoint.value, body, request_id, trace_headers
            )
            if span is not None:
                span.response(upstream.status)
            if request.stream and upstream.status == 200 and upstream.is_event_stream:
                # Settled when the stream ends; the deferred close covers a stream never read.
                hooks.defer(lambda: ledger.abandon(upstream))
                relayed = await relay_stream(
                    upstream,
                    ledger.settle_with(hooks.on_done),
                    ledger.time_first_chunk(hooks),
                    strip_usage_chunk=not request.include_usage,
                    finish_reasons=span is not None,
                    rewrite=None if renamed is None else dialect.renamer(renamed),
                    scanner_type=dialect.scanner,
                )
                return relayed, None
            answer = await upstream.read()
            usage = judge_whole(upstream, answer, span is not None, dialect.answer_usage)
        except RouterError as exc:
            hooks.on_upstream_time(ledger.fail(exc))
            _log_failure(request_id, backend, number, exc)
            return None, exc
        except BaseException:
            ledger.abandon(None)  # cancelled: the client left; not the backend's fault
            raise
        hooks.on_upstream_time(ledger.settle(ok=True))
        if renamed is not None:
            answer = renamed.whole(answer)
        return relay_whole(upstream, answer, usage, ledger.finish_with(hooks.on_done)), None


@dataclass(frozen=True, slots=True)
class RequestHooks:
    """How the forwarder reports back to the request it serves."""

    on_decision: DecisionCallback
    on_done: UsageCallback
    on_progress: ProgressCallback
    defer: Callable[[Callable[[], None]], None]  # run at the request's very end
    # Seconds spent waiting on a backend, once per attempt (streams: until the first chunk),
    # so the router's own share of the request time can be told apart.
    on_upstream_time: Callable[[float], None]
    # The request's trace; None when tracing is off. Then the client's own W3C trace headers,
    # if it sent any, go to the backend unchanged.
    trace: RequestTrace | None = None
    trace_headers: Mapping[str, str] | None = None


class _Ledger:
    """Accounts one attempt exactly once: in-flight, latency, passive health, metrics, span."""

    __slots__ = ("_backend", "_done", "_kind", "_r", "_span", "_started")

    def __init__(
        self, routing: RoutingParts, backend: str, kind: str, span: AttemptSpan | None
    ) -> None:
        self._r, self._backend, self._kind, self._span = routing, backend, kind, span
        self._started = routing.monotonic()
        self._done = False
        routing.registry.begin(backend)

    def settle(self, ok: bool, failure: str | None = None) -> float:
        """Account the attempt; returns its latency (0 when it was already accounted).

        A `failure` (error code) also ends the attempt's span; a success ends it with usage."""
        return self._account(ok, failure)

    def fail(self, error: RouterError) -> float:
        """Account a failed attempt; a backend's 429 is not a health failure (busy is not
        broken): it frees the slot and rests the backend for its Retry-After, if it sent one."""
        limited = error if isinstance(error, UpstreamRateLimited) else None
        return self._account(False, error.code, limited)

    def _account(
        self, ok: bool, failure: str | None, limited: UpstreamRateLimited | None = None
    ) -> float:
        if self._done:
            return 0.0
        self._done = True
        r = self._r
        now = r.monotonic()
        latency = now - self._started
        if limited is not None:
            r.registry.end_busy(self._backend, limited.rest_s, now)
        elif r.registry.end(self._backend, ok, latency, now) is not None:
            r.observer.ejected(self._backend)
        r.observer.attempt(self._backend, self._kind, ok, latency)
        if failure is not None and self._span is not None:
            self._span.finish(failure)
        return latency

    def abandon(self, upstream: UpstreamResponse | None) -> None:
        if upstream is not None:
            upstream.close()
        if not self._done:
            self._done = True
            self._r.registry.abandon(self._backend)
        if self._span is not None:
            self._span.finish("client_disconnected")  # no-op when it ended already

    def finish_with(self, on_done: UsageCallback) -> UsageCallback:
        """`on_done`, ending the attempt's span with the usage first."""
        span = self._span
        if span is None:
            return on_done

        def done(usage: Usage | None, outcome: str) -> None:
            span.finish(outcome, usage)
            on_done(usage, outcome)

        return done

    def time_first_chunk(self, hooks: RequestHooks) -> ProgressCallback:
        """`hooks.on_progress`, noting the wait for the stream's first chunk on its first call."""
        on_progress, note = hooks.on_progress, hooks.on_upstream_time
        monotonic, started = self._r.monotonic, self._started
        waiting = True

        def progress(usage: Usage | None, events: int) -> None:
            nonlocal waiting
            if waiting:
                waiting = False
                note(monotonic() - started)
            on_progress(usage, events)

        return progress

    def settle_with(self, on_done: UsageCallback) -> UsageCallback:
        finish = self.finish_with(on_done)

        def done(usage: Usage | None, outcome: str) -> None:
            self.settle(ok=outcome in ("ok", "client_disconnected"))
            finish(usage, outcome)

        return done


def _reason(error: RouterError | None) -> str:
    return error.code if error is not None else "unknown"


def _log_failure(request_id: str, backend: str, attempt: int, error: RouterError) -> None:
    # Only failures are logged here: a request's own line is the access log.
    _log.warning(
        "upstream_failed",
        request_id=request_id,
        backend=backend,
        attempt=attempt,
        error=error.code,
        upstream_status=error.extra_headers.get(UPSTREAM_STATUS),  # None: no HTTP answer
    )
