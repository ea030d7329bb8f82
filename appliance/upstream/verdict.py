"""Whether a backend's whole answer may reach the client, or is a failure to fail over from.

A 2xx must be a JSON object; a redirect, a 429 and a 5xx are failures (the 429 is the
backend's, not the router's: it carries its own code and the backend's status). A backend's
other 4xx is its verdict on the request and is relayed.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from appliance.errors import (
    RouterError,
    UpstreamError,
    UpstreamInvalidResponse,
    UpstreamRateLimited,
    UpstreamRedirect,
)
from appliance.upstream.ports import UpstreamResponse
from appliance.upstream.usage import NotAnObject, Usage, answer_usage

# On the router's error answers that stem from a backend's HTTP answer: its status.
UPSTREAM_STATUS = "x-routerctl-upstream-status"
_MAX_SHOWN = 200  # characters of a redirect target shown in a message


def judge_whole(
    upstream: UpstreamResponse,
    body: bytes,
    finish_reasons: bool,
    read_usage: Callable[[bytes, bool], Usage | None] = answer_usage,
) -> Usage | None:
    """The usage of an answer fit to relay (read by `read_usage`, the endpoint's dialect);
    raises the error to fail over from otherwise."""
    status = upstream.status
    if 200 <= status < 300:
        try:
            return read_usage(body, finish_reasons)
        except NotAnObject:
            raise UpstreamInvalidResponse(
                f"The backend answered HTTP {status} with a body that is not a JSON object.",
                headers={UPSTREAM_STATUS: str(status)},
            ) from None
    if status == 429:
        raise rate_limited(upstream)
    if status >= 500 or status < 400:
        raise _failed(upstream)
    return None


def rate_limited(upstream: UpstreamResponse) -> UpstreamRateLimited:
    """The backend's 429: Retry-After is the backend's (1 s when it sent none)."""
    rest_s = retry_after_s(upstream.header("retry-after"))
    error = UpstreamRateLimited(
        "The backend is rate limiting (it answered HTTP 429); retry after the time in Retry-After.",
        retry_after_s=1.0 if rest_s is None else max(rest_s, 1.0),
        headers={UPSTREAM_STATUS: "429"},
    )
    error.rest_s = rest_s
    return error


def retry_after_s(value: str | None) -> float | None:
    """Seconds in a Retry-After header; None when absent or not a number of seconds (the
    HTTP-date form is rare from model servers and not worth a date parser here)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if 0 < seconds < float("inf") else None


def _failed(upstream: UpstreamResponse) -> RouterError:
    status = upstream.status
    headers = {UPSTREAM_STATUS: str(status)}
    if status >= 500:
        return UpstreamError(f"The backend answered HTTP {status}.", headers=headers)
    return UpstreamRedirect(
        f"The backend answered HTTP {status}, a redirect to {_target(upstream)}; redirects are "
        "not followed: check the backend's url.",
        headers=headers,
    )


def _target(upstream: UpstreamResponse) -> str:
    """Where a redirect points, without query, fragment or credentials (they may be secret)."""
    location = upstream.header("location")
    if not location:
        return "nowhere (no Location header)"
    try:
        parts = urlsplit(location.strip())
        port = parts.port
    except ValueError:
        return "an unreadable Location"
    origin = f"{parts.scheme}://{parts.hostname}" if parts.scheme and parts.hostname else ""
    if origin and port is not None:
        origin += f":{port}"
    shown = origin + parts.path
    return shown[:_MAX_SHOWN] if shown else "an unreadable Location"
