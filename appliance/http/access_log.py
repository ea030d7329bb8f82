"""The access log: one JSON line per request, written by the edge when the request ends.

Only facts the router decided or counted go in: ids, route, outcome, tokens and timings.
Never a header, a body or a key: the API key is logged as its configured id.
"""

from __future__ import annotations

from appliance.http.context import RequestContext
from appliance.http.edge import AccessLog
from appliance.telemetry.logging import get_logger


def access_logger(enabled: bool) -> AccessLog:
    log = get_logger("routerctl.access")

    def skip(_context: RequestContext) -> None:
        return None

    def write(context: RequestContext) -> None:
        ttft = context.ttft_s
        log.info(
            "request",
            request_id=context.request_id,
            method=context.method,
            path=context.path,
            status=context.status,
            duration_ms=round(context.duration_s * 1000, 3),
            ttft_ms=None if ttft is None else round(ttft * 1000, 3),
            org=context.org,
            key_id=context.key_id,
            model=context.model,
            backend=context.backend,
            decision=context.decision,
            attempts=context.attempts,
            stream=context.stream,
            prompt_tokens=context.prompt_tokens,
            completion_tokens=context.completion_tokens,
            outcome=context.outcome,
        )

    return write if enabled else skip
