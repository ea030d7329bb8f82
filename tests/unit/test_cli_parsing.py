"""CLI pure parts: --ttl parsing, duration display, and the admin client's one-line errors."""

from __future__ import annotations

import json
import socket

import pytest

from routerctl.admin_client import (
    AdminClient,
    AdminError,
    OverrideInfo,
    connection_error_message,
    http_error_message,
)
from routerctl.commands.admin_view import expires_in, format_duration, parse_ttl

URL = "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("1d", 86400),
        ("45", 45),
        ("1.5h", 5400),
        (" 10M ", 600),
        ("0.5", 0.5),
        ("366d", 366 * 86400),
    ],
)
def test_ttl_accepts_units_and_plain_seconds(text: str, seconds: float) -> None:
    """s, m, h, d (any case) and bare numbers are seconds-valued durations."""
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5x", "-5m", "1h30m", "m", "0", "0s", "367d", "1e3"])
def test_ttl_rejects_nonsense_with_one_line(text: str) -> None:
    """Anything else is a ValueError with a one-line message quoting the input."""
    with pytest.raises(ValueError, match="duration") as caught:
        parse_ttl(text)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (45, "45s"), (899.6, "15m"), (899, "14m 59s"), (7500, "2h 5m"), (90061, "1d 1h")],
)
def test_duration_display(seconds: float, shown: str) -> None:
    """Durations show at most two units, rounded to the second."""
    assert format_duration(seconds) == shown


def test_expiry_display() -> None:
    """An override shows 'until cleared', 'expires in ...' or 'expired'."""
    base = OverrideInfo("ov-1", "drain", "b", None, 0.0, "r", "a", 100.0, None)
    assert expires_in(base, 150.0) == "until cleared"
    timed = OverrideInfo("ov-1", "drain", "b", None, 0.0, "r", "a", 100.0, 200.0)
    assert expires_in(timed, 150.0) == "expires in 50s"
    assert expires_in(timed, 250.0) == "expired"


def error_body(message: str, code: str, param: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": "x", "param": param, "code": code}}
    ).encode()


def test_401_says_to_set_the_token() -> None:
    """A rejected token points at ROUTERCTL_TOKEN and keeps the router's explanation."""
    body = error_body("Incorrect admin token provided.", "invalid_admin_token")
    message = http_error_message(URL, 401, body)
    assert "ROUTERCTL_TOKEN" in message
    assert "Incorrect admin token provided." in message


def test_403_says_permission_denied() -> None:
    """A role too weak for the change reads as permission denied with the router's reason."""
    body = error_body("It needs the operator role.", "insufficient_role")
    assert http_error_message(URL, 403, body) == "permission denied: It needs the operator role."


def test_404_of_a_target_is_the_routers_message() -> None:
    """An unknown backend or override is the router's own message, unadorned."""
    body = error_body("No backend has the id 'x'.", "backend_not_found")
    assert http_error_message(URL, 404, body) == "No backend has the id 'x'."


def test_404_of_a_route_suggests_a_wrong_url() -> None:
    """A 404 for the route itself (or a non-router) asks whether the URL is a router."""
    assert URL in http_error_message(URL, 404, error_body("No such route.", "not_found"))
    assert URL in http_error_message(URL, 404, b"<html>nginx</html>")


def test_other_statuses_carry_status_code_and_message() -> None:
    """Other errors show the status, the error code and the router's message on one line."""
    body = error_body("Invalid 'weight':\nexpected a number < 1.0.", "invalid_request", "weight")
    message = http_error_message(URL, 400, body)
    assert message == (
        "router answered HTTP 400 invalid_request: Invalid 'weight': expected a number < 1.0."
    )


def test_non_json_error_body_is_still_one_line() -> None:
    """A proxy's HTML error page becomes a short line with the status."""
    message = http_error_message(URL, 502, b"<html>\n<body>Bad Gateway</body>\n</html>")
    assert message == "router answered HTTP 502: HTTP 502 without an error message"


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (TimeoutError("timed out"), "did not answer in time"),
        (socket.gaierror(-2, "Name or service not known"), "unknown host"),
        (OSError(113, "No route to host"), "no route to host"),
        ("some text", "some text"),
    ],
)
def test_connection_errors(reason: object, expected: str) -> None:
    """Failures without an HTTP answer name the router URL and the cause in one line."""
    message = connection_error_message(URL, reason)
    assert URL in message
    assert expected in message


def test_timeout_names_the_limit() -> None:
    """A timeout says how long the client waited."""
    message = connection_error_message(URL, TimeoutError(), timeout_s=5.0)
    assert message == f"router at {URL} did not answer within 5 s"


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "ftp://x", "http://", "file:///etc/passwd"])
def test_bad_url_is_refused_before_any_request(url: str) -> None:
    """Only http(s)://HOST URLs are accepted."""
    with pytest.raises(AdminError, match="invalid router URL"):
        AdminClient(url, "token")


def test_missing_token_is_reported_without_a_request() -> None:
    """Without ROUTERCTL_TOKEN the client says so and never connects."""
    client = AdminClient("http://127.0.0.1:9", None)
    with pytest.raises(AdminError, match="ROUTERCTL_TOKEN is not set"):
        client.backends()
