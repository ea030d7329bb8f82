"""Redis replies read off the wire (RESP2 and RESP3), as redis-py returns them unparsed:
bulk and simple strings as bytes, integers as int, nil as None, an error reply as its
redis-py exception object (returned, not raised: it answers one command only).

No I/O: bytes in, replies out. Parsing here rather than through redis-py's stream reader
spares a task, a stream and several coroutine frames per reply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ExecAbortError,
    NoPermissionError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)

# The error codes whose class the limit store (or an operator reading its logs) tells apart;
# redis-py names them the same way and, like it, the code is cut from the message.
_ERRORS: dict[str, type[RedisError]] = {
    "NOSCRIPT": NoScriptError,
    "LOADING": BusyLoadingError,
    "READONLY": ReadOnlyError,
    "NOAUTH": AuthenticationError,
    "WRONGPASS": AuthenticationError,
    "NOPERM": NoPermissionError,
    "EXECABORT": ExecAbortError,
}
MAX_BUFFERED = 64 * 1024 * 1024  # an unfinished reply past this is a broken server


class RespError(ValueError):
    """Bytes that are not RESP: the connection is beyond repair."""


class _Incomplete(Exception):
    pass


_INCOMPLETE = _Incomplete()


class Replies:
    """Feed bytes as they arrive; get back every reply they complete, in order. RESP3 push
    messages (invalidations, maintenance notices) are dropped: they answer no command, and
    counting one as a reply would hand every caller after it the previous one's."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buf = self._buf
        buf += data
        replies: list[Any] = []
        pos = 0
        end = len(buf)
        try:
            while pos < end:
                push = buf[pos] == 0x3E  # > out-of-band (RESP3): it answers no command
                reply, pos = _parse(buf, pos)
                if not push:
                    replies.append(reply)
        except _Incomplete:
            if end - pos > MAX_BUFFERED:
                raise RespError(f"a reply longer than {MAX_BUFFERED} bytes") from None
        del buf[:pos]
        return replies


def error(message: str) -> RedisError:
    """The redis-py exception for an error reply's text."""
    code = message.split(" ", 1)[0]
    kind = _ERRORS.get(code)
    if kind is None:
        return ResponseError(message)
    return kind(message[len(code) + 1 :])


def _parse(buf: bytearray, pos: int) -> tuple[Any, int]:
    """One reply starting at `pos`: (it, where the next starts); _Incomplete if cut."""
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        raise _INCOMPLETE
    read = _READERS.get(buf[pos])
    if read is None:
        raise RespError(f"unknown reply type {chr(buf[pos])!r}")
    return read(buf, pos, eol)


def _bulk(buf: bytearray, pos: int, eol: int) -> tuple[Any, int]:
    size, start = _int(buf, pos, eol), eol + 2
    if size < 0:
        return None, start
    end = start + size
    if len(buf) < end + 2:
        raise _INCOMPLETE
    data = bytes(buf[start:end])
    kind = buf[pos]
    if kind == 0x21:  # ! bulk error
        return error(data.decode(errors="replace")), end + 2
    return (data[4:] if kind == 0x3D else data), end + 2  # = verbatim: its "txt:" cut


def _simple(buf: bytearray, pos: int, eol: int) -> tuple[Any, int]:
    return bytes(buf[pos + 1 : eol]), eol + 2


def _error_line(buf: bytearray, pos: int, eol: int) -> tuple[Any, int]:
    return error(buf[pos + 1 : eol].decode(errors="replace")), eol + 2


def _integer(buf: bytearray, pos: int, eol: int) -> tuple[Any, int]:
    return _int(buf, pos, eol), eol + 2


def _null(_buf: bytearray, _pos: int, eol: int) -> tuple[Any, int]:
    return None, eol + 2


def _double(buf: bytearray, pos: int, eol: int) -> tuple[Any, int]:
    try:
        return float(buf[pos + 1 : eol]), eol + 2
    except ValueError:
        raise RespError("a double that is not a number") from None


def _boolean(buf: bytearray, pos: int, eol: int) -> tuple[Any, int]:
    return buf[pos + 1 : eol] == b"t", eol + 2


def _aggregate(buf: bytearray, pos: int, eol: int) -> tuple[Any, int]:
    """* array, ~ set, > push: a list; % map: a dict."""
    count, nxt = _int(buf, pos, eol), eol + 2
    if count < 0:
        return None, nxt
    is_map = buf[pos] == 0x25
    items = []
    for _ in range(count * 2 if is_map else count):
        item, nxt = _parse(buf, nxt)
        items.append(item)
    if is_map:
        return dict(zip(items[::2], items[1::2], strict=True)), nxt
    return items, nxt


_Reader = Callable[[bytearray, int, int], tuple[Any, int]]
_READERS: dict[int, _Reader] = {
    **dict.fromkeys(b"$=!", _bulk),
    ord("+"): _simple,
    ord("-"): _error_line,
    **dict.fromkeys(b":(", _integer),
    ord("_"): _null,
    ord(","): _double,
    ord("#"): _boolean,
    **dict.fromkeys(b"*~>%", _aggregate),
}


def _int(buf: bytearray, pos: int, eol: int) -> int:
    try:
        return int(buf[pos + 1 : eol])
    except ValueError:
        raise RespError("a length or integer that is not a number") from None
