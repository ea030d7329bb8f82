"""HTTP/1.1 hardening over hypercorn's h11 protocol: what is decided before the app runs.

- A request carrying both Content-Length and Transfer-Encoding is refused (400) and its
  connection closed (RFC 9112 §6.1), so bytes after its last chunk never run as a second
  request that a proxy in front saw as body.
- Only HTTP/1.0 and 1.1 are served and no protocol is switched to: an `Upgrade` header (h2c,
  websocket) is ignored, the request answered in HTTP/1.1; the HTTP/2 prior-knowledge preface
  `PRI * HTTP/2.0` is refused. Cleartext HTTP/2 and WebSockets are thus off.
- A request head must be complete `header_timeout_s` after its first byte, else 408.
- What the parser refuses (431, bad characters, no Host, conflicting lengths) is answered in
  the catalog's shape with a fresh x-request-id, like every other error.
- A connection closed while the client may still be sending lingers (lingering_close.py):
  what arrives after the close is dropped here, never parsed.

hypercorn has no plug-in point for protocols: `install()` swaps the class its ProtocolWrapper
instantiates, after checking this is the hypercorn whose internals the overrides were
written against.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from importlib import metadata
from typing import Any

import h11
import hypercorn.protocol
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.h11 import H11Protocol

from appliance.errors import RouterError
from appliance.server import lingering_close
from appliance.server.h1.refusal import invalid, refused, too_large, too_slow
from appliance.server.startup_error import StartupError

WRITTEN_FOR = "0.18.0"
# The internals overridden below, by the names hypercorn's code uses for them.
_HOOKS: dict[Callable[..., object], tuple[str, ...]] = {
    hypercorn.protocol.ProtocolWrapper.__init__: ("H11Protocol",),
    H11Protocol.__init__: ("connection", "send"),
    H11Protocol._handle_events: ("next_event", "_check_protocol", "_send_error_response"),
    H11Protocol.handle: ("receive_data", "_handle_events"),
    H11Protocol._send_error_response: ("_send_h11_event",),
    **lingering_close.HOOKS,
}
_HTTP_1 = frozenset({b"1.0", b"1.1"})
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_NO_SWITCH = "no protocol switch is offered"
# h11 quotes offending bytes in some messages ("illegal header line: b'...'"); a client's
# headers, its API key among them, are neither echoed nor logged.
_QUOTED_BYTES = re.compile(r":? (?:b'|b\"|bytearray\().*", re.DOTALL)


class HardenedConfig(Config):
    """hypercorn's config plus what the hardened protocol reads."""

    header_timeout_s: float = 10.0


def install() -> None:
    """Serve HTTP/1.x with HardenedH11Protocol; raises StartupError on another hypercorn."""
    try:
        version: str | None = metadata.version("hypercorn")
    except metadata.PackageNotFoundError:
        version = None  # a PyInstaller binary may not carry the metadata; the hooks decide
    check_hypercorn(version)
    if not lingering_close.install():
        raise StartupError(
            f"hypercorn {version or '(unknown version)'}'s runner no longer creates connections "
            f"as routerctl's HTTP/1.1 hardening expects; install hypercorn=={WRITTEN_FOR}"
        )
    hypercorn.protocol.H11Protocol = HardenedH11Protocol  # type: ignore[attr-defined]


def check_hypercorn(version: str | None) -> None:
    """Refuse a hypercorn other than WRITTEN_FOR, or one whose overridden internals moved."""
    missing = [
        f"{function.__qualname__} uses {name}"
        for function, names in _HOOKS.items()
        for name in names
        if name not in function.__code__.co_names
    ]
    if (version is not None and version != WRITTEN_FOR) or missing:
        found = f"hypercorn {version or '(unknown version)'}"
        raise StartupError(
            f"{found} is installed, but routerctl's HTTP/1.1 hardening is written for "
            f"hypercorn {WRITTEN_FOR}'s internals"
            + (f" (no longer true: {', '.join(missing)})" if missing else "")
            + f"; install hypercorn=={WRITTEN_FOR}"
        )


class _StrictConnection(h11.Connection):
    """h11's server side, also refusing the requests RFC 9112 says to refuse that h11 passes."""

    refusal = ""  # why the last event was refused, without the client's bytes
    refused_head = False  # h11 frames the answer to a HEAD request without a body

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as error:
            self.refusal = _QUOTED_BYTES.sub("", str(error))
            raise
        if type(event) is not h11.Request:
            return event
        refusal = _refusal(event)
        if refusal == _NO_SWITCH:
            # h11 denies the proposed switch once the answer is not a 101.
            return _without_upgrade(event)
        if refusal:
            self.refusal = refusal
            self.refused_head = event.method == b"HEAD"
            # hypercorn answers this like any parse error: our 400, then a close.
            raise h11.RemoteProtocolError(refusal, error_status_hint=400)
        return event


def _refusal(request: h11.Request) -> str:
    """Why `request` is refused, _NO_SWITCH when only its Upgrade header goes, else ""."""
    if request.http_version not in _HTTP_1:
        return "only HTTP/1.0 and HTTP/1.1 are served"
    framing = 0
    upgrade = False
    # h11 lower-cases names and keeps at most one of each: two hits are one of both.
    for name, _ in request.headers:
        if name in _FRAMING:
            framing += 1
        elif name == b"upgrade":
            upgrade = True
    if framing > 1:
        return "both Content-Length and Transfer-Encoding"
    return _NO_SWITCH if upgrade else ""


def _without_upgrade(request: h11.Request) -> h11.Request:
    return h11.Request(
        method=request.method,
        target=request.target,
        headers=[(name, value) for name, value in request.headers if name != b"upgrade"],
        http_version=request.http_version,
    )


class HardenedH11Protocol(H11Protocol):
    """hypercorn's HTTP/1.1 protocol with the hardening this module describes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._strict = _StrictConnection(
            h11.SERVER, max_incomplete_event_size=self.config.h11_max_incomplete_size
        )
        self.connection = self._strict
        self._head_timeout = (
            self.config.header_timeout_s if isinstance(self.config, HardenedConfig) else None
        )
        self._head_timer: asyncio.TimerHandle | None = None
        self._to_server, self.send = self.send, self._send
        self._closing = False

    async def _send(self, event: Event) -> None:
        if isinstance(event, Closed):
            self._closing = True
        await self._to_server(event)

    async def handle(self, event: Event) -> None:
        if self._closing and isinstance(event, RawData):
            return  # the connection lingers after the close: drop, never parse or buffer
        await super().handle(event)
        if isinstance(event, RawData):
            self._watch_head()
        elif isinstance(event, Closed):
            self._stop_head_timer()

    async def _check_protocol(self, _event: h11.Request) -> None:
        # Called as each head is parsed: it arrived in time. Unlike hypercorn's own, this
        # never switches to HTTP/2.
        self._stop_head_timer()

    async def _send_error_response(self, status_code: int) -> None:
        error = self._error_for(status_code)
        request_id, body = refused(error)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),
            (b"connection", b"close"),
            *self.config.response_headers("h11"),
        ]
        await self._send_h11_event(h11.Response(status_code=error.status, headers=headers))
        if not self._strict.refused_head:
            await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())

    def _error_for(self, status_code: int) -> RouterError:
        if status_code == 408 and self._head_timeout is not None:
            return too_slow(self._head_timeout).error
        if status_code == 431:
            return too_large(self.config.h11_max_incomplete_size).error
        return invalid(self._strict.refusal or "malformed request").error

    def _watch_head(self) -> None:
        """Start the head deadline when a head is buffered but not complete."""
        if (
            self._head_timer is None
            and self._head_timeout is not None
            and self.connection.their_state is h11.IDLE
            and self.connection.trailing_data[0]
        ):
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_later(self._head_timeout, self._head_too_slow)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.connection.their_state is h11.IDLE:
            self.task_group.spawn(self._refuse_slow_head)

    async def _refuse_slow_head(self) -> None:
        if self.connection.their_state is h11.IDLE:  # it may have completed meanwhile
            await self._send_error_response(408)
            await self.send(Closed())
