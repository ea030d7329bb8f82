"""Lingering close (RFC 9112 §9.6): a connection the router closes while the client may still
be sending is half-closed first, and what arrives after is read and dropped until the client
closes too, `LINGER_S` passes or `LINGER_BYTES` have been dropped.

Without it, a connection closed with unread bytes in its receive buffer (a 413 answered from
the head of a 100 MB upload, a 431, a 408) is reset by the kernel, and a client still writing
loses the answer it was sent: it sees "connection reset" instead of the status. Dropped bytes
are never buffered, and the wait is bounded in time and bytes, so a client that keeps sending
costs at most `LINGER_S` and `LINGER_BYTES` of reading (a 100 MB upload is not read whole):
past the bytes, reading stops and the connection waits out the time, so a client busy
sending still has `LINGER_S` to read its answer before the reset.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from ssl import SSLError

import hypercorn.asyncio.run
from hypercorn.asyncio.tcp_server import MAX_RECV, TCPServer
from hypercorn.events import Closed, RawData

LINGER_S = 2.0
LINGER_BYTES = 16 * 1024 * 1024
# hypercorn's internals this relies on, by the names its code uses (see h11_hardening).
HOOKS: dict[Callable[..., object], tuple[str, ...]] = {
    TCPServer._close: ("write_eof", "close"),
    TCPServer._read_data: ("at_eof", "handle"),
}


class LingeringTCPServer(TCPServer):
    """hypercorn's connection, half-closed first when the client has not closed its side.

    hypercorn's read loop goes on reading after the half-close; the protocol drops what it
    reads (HardenedH11Protocol, once it has asked for the close). The full close follows the
    client's own close, or the timer."""

    _linger: asyncio.TimerHandle | None = None
    _dropped = 0

    async def _read_data(self) -> None:
        # hypercorn's loop, plus the byte bound once lingering (a copy: it has no hook).
        while not self.reader.at_eof():
            try:
                data = await asyncio.wait_for(self.reader.read(MAX_RECV), self.config.read_timeout)
            except (ConnectionError, OSError, TimeoutError, SSLError):
                break
            if self._linger is not None:
                self._dropped += len(data)
                if self._dropped > LINGER_BYTES:
                    # Enough read for nothing. Stop reading (the client's sends block on a full
                    # window) but keep the connection until the timer: a reset now would make
                    # the client's system discard the answer it has not read yet.
                    await asyncio.sleep(max(0.0, self._linger.when() - self.loop.time()))
                    break
            await self.protocol.handle(RawData(data))
        await self.protocol.handle(Closed())

    async def _close(self) -> None:
        if self._linger is None and not self.reader.at_eof():
            try:
                self.writer.write_eof()
            except (NotImplementedError, OSError, RuntimeError):
                pass  # TLS, or the transport is gone: close at once
            else:
                self._linger = self.loop.call_later(LINGER_S, self.writer.close)
                return
        if self._linger is not None:
            self._linger.cancel()
        # ENOTCONN: the client went after the half-close, and nothing is left to close
        # (hypercorn's `finally` still stops the idle task).
        with contextlib.suppress(OSError):
            await super()._close()


def install() -> bool:
    """Serve connections with LingeringTCPServer; False when hypercorn's runner no longer
    creates its connections under the name replaced here."""
    if getattr(hypercorn.asyncio.run, "TCPServer", None) not in (TCPServer, LingeringTCPServer):
        return False
    hypercorn.asyncio.run.TCPServer = LingeringTCPServer  # type: ignore[attr-defined]
    return True
