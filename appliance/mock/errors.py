"""OpenAI-shaped errors for the mock backend (pure: no I/O imports)."""

from __future__ import annotations

from typing import Final

# The `type` strings OpenAI's API puts in error bodies; SDKs key retries off the status, but
# humans reading drill output key off these.
_TYPES: Final[dict[int, str]] = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    422: "unprocessable_entity_error",
    429: "rate_limit_error",
}
_CODES: Final[dict[int, str]] = {
    401: "invalid_api_key",
    404: "not_found",
    429: "rate_limit_exceeded",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


def error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    if status >= 500:
        return "server_error"
    return _TYPES.get(status, "invalid_request_error")


class MockError(Exception):
    """A request the mock answers with an error status and an OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        error_type_: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code if code is not None else _CODES.get(status)
        self.param = param
        self.type = error_type_ if error_type_ is not None else error_type(status)

    def body(self) -> dict[str, object]:
        """The `{"error": {...}}` document, exactly OpenAI's field set."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def injected(status: int, why: str) -> MockError:
    """An error the operator asked for (directive or fail rate), labelled as such."""
    return MockError(status, f"mock backend: injected HTTP {status} ({why})")
