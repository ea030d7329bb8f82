"""The request head being parsed: target, headers and size, checked as llhttp reports them."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from appliance.server.h1.refusal import invalid, too_large

_HTTP_1 = frozenset({"1.0", "1.1"})
_ASGI = {"version": "3.0", "spec_version": "2.3"}
Address = tuple[str, int] | None


class Head:
    """One message's head, from `begin` (its first byte) to `complete` (its blank line).

    Its size counts the target and every header line, and then a chunked body's trailer
    fields, which are counted against the same bound but never become headers. Raises the
    refusal (refusal.Refused) the head earns: the caller is a parser callback."""

    __slots__ = ("expect_100", "headers", "hosts", "is_head", "max_bytes", "open", "size", "url")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.size = 0
        self.open = False  # between the first byte and the blank line
        self.hosts = 0
        self.expect_100 = False
        self.is_head = False  # a HEAD request, whose answers (refusals too) have no body

    def begin(self) -> None:
        self.url = b""
        self.headers = []
        self.size = 0
        self.open = True
        self.hosts = 0
        self.expect_100 = False
        self.is_head = False

    def grow(self, size: int) -> None:
        self.size += size
        if self.size > self.max_bytes:
            raise too_large(self.max_bytes)

    def add_url(self, url: bytes) -> None:
        self.url += url
        self.grow(len(url))

    def add_header(self, name: bytes, value: bytes) -> None:
        self.grow(len(name) + len(value) + 4)
        if not self.open:
            return  # a chunked body's trailer: counted, never merged into the headers
        name = name.lower()
        value = value.rstrip(b" \t")
        if name == b"host":
            self.hosts += 1
        elif name == b"expect":
            self.expect_100 = value.lower() == b"100-continue"
        elif name == b"upgrade":
            return  # no protocol switch is offered: the app never sees the proposal
        self.headers.append((name, value))

    def complete(self, method: str, version: str) -> None:
        """The blank line: refuse what is not served."""
        self.open = False
        self.is_head = method == "HEAD"
        if version not in _HTTP_1:
            raise invalid("only HTTP/1.0 and HTTP/1.1 are served")
        if method == "CONNECT":
            raise invalid("CONNECT is not served")
        if version == "1.1" and self.hosts != 1:
            raise invalid("an HTTP/1.1 request needs exactly one Host header")

    def scope(self, method: str, version: str, client: Address, server: Address) -> dict[str, Any]:
        path, _, query = self.url.partition(b"?")
        try:
            decoded = unquote(path.decode("ascii"))
        except UnicodeDecodeError:
            raise invalid("the request target is not ASCII") from None
        return {
            "type": "http",
            "asgi": _ASGI,
            "http_version": version,
            "method": method,
            "scheme": "http",
            "path": decoded,
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": self.headers,
            "client": client,
            "server": server,
            "extensions": {},
        }

    def without_upgrade(self, method: bytes, version: str) -> bytes:
        """The head as bytes again, its Upgrade header left out."""
        return b"%s %s HTTP/%s\r\n%s\r\n" % (
            method,
            self.url,
            version.encode(),
            b"".join(b"%s: %s\r\n" % pair for pair in self.headers),
        )
