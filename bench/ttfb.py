"""Time to first streamed byte: sequential streaming requests on one keep-alive connection.

wrk times whole responses; a stream's first byte is what a chat client waits for. This probe
sends `count` requests one after another, notes when the first byte of each response body
arrives (after the head: the first SSE event, or its chunk-size line), reads the rest, and
checks the answer is a 200 ending in `data: [DONE]`. The client is the same Python code for
every target, so its own cost cancels out of the "added over the do-nothing proxy" figure.
"""

from __future__ import annotations

import socket
import statistics
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Probe:
    target: str
    count: int
    p50_ms: float
    p99_ms: float
    problem: str = ""  # empty when every answer was a complete 200 stream

    @property
    def ok(self) -> bool:
        return not self.problem


class _Failed(Exception):
    pass


def probe(target: str, url: str, body: str, key: str, count: int) -> Probe:
    """`count` streamed requests to `url`; the p50 and p99 of their time to first body byte."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    payload = body.encode()
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    times: list[float] = []
    try:
        with socket.create_connection((host, port), timeout=_TIMEOUT_S) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader = _Reader(sock)
            for _ in range(count):
                started = time.perf_counter()
                sock.sendall(request)
                first = reader.response()
                times.append(first - started)
    except (OSError, _Failed) as exc:
        return Probe(target, len(times), 0.0, 0.0, f"ttfb probe: {exc}")
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return Probe(target, count, statistics.median(times) * 1000, p99 * 1000)


class _Reader:
    """Just enough HTTP/1.1 to read one response (Content-Length or chunked) off a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""

    def _more(self) -> None:
        data = self._sock.recv(65536)
        if not data:
            raise _Failed("connection closed mid-response")
        self._buf += data

    def response(self) -> float:
        """Read one whole response; returns when (perf_counter) its first body byte came."""
        while b"\r\n\r\n" not in self._buf:
            self._more()
        head, _, self._buf = self._buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith("HTTP/1.1 200"):
            raise _Failed(f"answer {lines[0]!r}")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
        }
        if not self._buf:
            self._more()
        first = time.perf_counter()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._chunked()
        else:
            body = self._sized(int(headers.get("content-length", "0")))
        if b"data: [DONE]" not in body:
            raise _Failed(f"stream without 'data: [DONE]': {body[-200:]!r}")
        return first

    def _sized(self, size: int) -> bytes:
        while len(self._buf) < size:
            self._more()
        body, self._buf = self._buf[:size], self._buf[size:]
        return body

    def _chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            while b"\r\n" not in self._buf:
                self._more()
            line, _, self._buf = self._buf.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            chunk = self._sized(size + 2)  # the chunk and its CRLF
            if size == 0:
                return b"".join(parts)
            parts.append(chunk[:-2])
