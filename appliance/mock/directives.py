"""Fault directives: `[mock:NAME]` / `[mock:NAME=VALUE]` tokens embedded in request text.

Directives ride inside the request body (last user message, prompt or embedding input) because
a proxy forwards the body unchanged but never the client's headers: that is the only channel a
test or drill has to steer the backend *through* the router.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

from appliance.mock.errors import MockError

_PATTERN: Final = re.compile(r"\[mock:([A-Za-z_]+)(?:=([^\]\s]*))?\]")
_MARKER: Final = "[mock:"

# Upper bounds keep a typo (`latency_ms=50000000`) from wedging a test run for days.
MAX_DELAY_MS: Final = 600_000.0
MAX_CHUNKS: Final = 4096

MAX_RETRY_AFTER_S: Final = 86_400

_INT_NAMES: Final = frozenset(
    {"status", "chunks", "break_after", "garbage_after", "stall_after", "retry_after"}
)
_FLOAT_NAMES: Final = frozenset({"latency_ms", "chunk_delay_ms"})
_FLAG_NAMES: Final = frozenset({"hang", "garbage"})
KNOWN: Final = tuple(sorted(_INT_NAMES | _FLOAT_NAMES | _FLAG_NAMES))


@dataclass(frozen=True, slots=True)
class Directives:
    """The faults one request asked for; `None`/`False` means "behave normally"."""

    status: int | None = None
    latency_ms: float | None = None
    chunks: int | None = None
    chunk_delay_ms: float | None = None
    break_after: int | None = None
    garbage_after: int | None = None  # stream: a broken event after N content chunks
    stall_after: int | None = None  # stream: stop sending after N content chunks, stay open
    retry_after: int | None = None  # seconds in a 429's Retry-After; 0 = no header
    hang: bool = False
    garbage: bool = False


NONE: Final = Directives()


def _bad(name: str, value: str | None, why: str) -> MockError:
    shown = f"[mock:{name}]" if value is None else f"[mock:{name}={value}]"
    return MockError(400, f"invalid mock directive {shown}: {why}", param="mock_directive")


def _int_value(name: str, value: str | None) -> int:
    if value is None or not value.isdigit():
        raise _bad(name, value, "expected a non-negative integer")
    number = int(value)
    if name == "status" and not 300 <= number <= 599:
        raise _bad(name, value, "status must be between 300 and 599")
    if name == "retry_after" and number > MAX_RETRY_AFTER_S:
        raise _bad(name, value, f"retry_after must be at most {MAX_RETRY_AFTER_S}")
    if name == "chunks" and not 1 <= number <= MAX_CHUNKS:
        raise _bad(name, value, f"chunks must be between 1 and {MAX_CHUNKS}")
    return number


def _float_value(name: str, value: str | None) -> float:
    try:
        number = float(value) if value is not None else math.nan
    except ValueError:
        number = math.nan
    # `not <=` also rejects NaN, which float() happily parses from "nan".
    if not 0.0 <= number <= MAX_DELAY_MS:
        raise _bad(name, value, f"expected milliseconds between 0 and {MAX_DELAY_MS:g}")
    return number


def parse_directives(text: str, defaults: str = "") -> Directives:
    """Collect every directive in `text`; later ones override earlier ones of the same name.
    `defaults` (the live config's `directives`) come first, so the request's own win.

    Unknown names and malformed values raise a 400 `MockError`, so a typo in a drill fails loudly
    instead of silently running the happy path.
    """
    if defaults:
        text = f"{defaults} {text}"
    if _MARKER not in text:  # fast path: load tests never pay for the regex
        return NONE
    ints: dict[str, int] = {}
    floats: dict[str, float] = {}
    flags: set[str] = set()
    for match in _PATTERN.finditer(text):
        name, value = match.group(1), match.group(2)
        if name in _FLAG_NAMES:
            if value is not None:
                raise _bad(name, value, "this directive takes no value")
            flags.add(name)
        elif name in _INT_NAMES:
            ints[name] = _int_value(name, value)
        elif name in _FLOAT_NAMES:
            floats[name] = _float_value(name, value)
        else:
            raise _bad(name, value, f"unknown directive; known: {', '.join(KNOWN)}")
    return Directives(
        status=ints.get("status"),
        latency_ms=floats.get("latency_ms"),
        chunks=ints.get("chunks"),
        chunk_delay_ms=floats.get("chunk_delay_ms"),
        break_after=ints.get("break_after"),
        garbage_after=ints.get("garbage_after"),
        stall_after=ints.get("stall_after"),
        retry_after=ints.get("retry_after"),
        hang="hang" in flags,
        garbage="garbage" in flags,
    )
