"""What the HTTP/1.1 layer answers before any app runs: the catalog's error shape.

A refused request gets the same JSON error, with a fresh x-request-id, that the app gives
for its own errors, and its connection is closed.
"""

from __future__ import annotations

import uuid
from http import HTTPStatus

from appliance.errors import HeadersTooLarge, InvalidRequest, RequestTimeout, RouterError
from appliance.telemetry.logging import get_logger

_log = get_logger("routerctl.http")


class Refused(Exception):
    """Raised inside the parser's callbacks: the request is answered with `error`, closed."""

    def __init__(self, error: RouterError) -> None:
        super().__init__(error.message)
        self.error = error


def invalid(reason: str) -> Refused:
    return Refused(InvalidRequest(f"The request is not valid HTTP/1.1: {reason}."))


def too_large(limit: int) -> Refused:
    return Refused(HeadersTooLarge(f"The request head exceeds {limit} bytes."))


def too_slow(timeout_s: float) -> Refused:
    return Refused(RequestTimeout(f"The request head did not arrive within {timeout_s:g} s."))


def refused(error: RouterError) -> tuple[str, bytes]:
    """A refusal's fresh request id and body, logged as `http_refused` (either engine)."""
    request_id = uuid.uuid4().hex
    _log.info("http_refused", request_id=request_id, status=error.status, reason=error.message)
    return request_id, error.body()


def refusal_bytes(error: RouterError, date: bytes, *, with_body: bool = True) -> bytes:
    """The whole answer (head and body) to a refused request."""
    request_id, body = refused(error)
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"x-request-id: %s\r\nconnection: close\r\n%s\r\n"
        % (error.status, reason_phrase(error.status), len(body), request_id.encode(), date)
    )
    return head + body if with_body else head


_PHRASES = {status.value: status.phrase.encode() for status in HTTPStatus}


def reason_phrase(status: int) -> bytes:
    return _PHRASES.get(status, b"")
