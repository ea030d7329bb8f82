"""Redis replies read off the wire (limits/resp.py): every RESP2 and RESP3 type, in pieces."""

from __future__ import annotations

import pytest
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError

from appliance.limits import resp
from appliance.limits.resp import Replies, RespError

WIRE = (
    b"$5\r\nhello\r\n"  # bulk
    b"+OK\r\n"  # simple
    b":-42\r\n"  # integer
    b"$-1\r\n"  # RESP2 nil
    b"_\r\n"  # RESP3 null
    b"*3\r\n:1\r\n$0\r\n\r\n*1\r\n+x\r\n"  # nested array, an empty bulk
    b"*-1\r\n"  # nil array
    b"%1\r\n+k\r\n:2\r\n"  # map
    b"~1\r\n:7\r\n"  # set
    b",3.5\r\n,inf\r\n"  # doubles
    b"#t\r\n#f\r\n"  # booleans
    b"(12345678901234567890\r\n"  # big number
    b"=8\r\ntxt:abcd\r\n"  # verbatim
    b"$4\r\na\r\nb\r\n"  # a bulk holding CRLF
)
EXPECTED = [
    b"hello",
    b"OK",
    -42,
    None,
    None,
    [1, b"", [b"x"]],
    None,
    {b"k": 2},
    [7],
    3.5,
    float("inf"),
    True,
    False,
    12345678901234567890,
    b"abcd",
    b"a\r\nb",
]


def test_every_type_in_one_read() -> None:
    assert Replies().feed(WIRE) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_replies_cut_anywhere_come_out_whole_and_in_order(size: int) -> None:
    replies = Replies()
    out = []
    for start in range(0, len(WIRE), size):
        out += replies.feed(WIRE[start : start + size])
    assert out == EXPECTED


@pytest.mark.parametrize("size", [1, 5, 64])
def test_push_messages_answer_no_command(size: int) -> None:
    """RESP3 pushes (an invalidation here) arrive between replies; they are dropped, or every
    caller after one would get the previous caller's reply."""
    wire = b"$1\r\na\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n:2\r\n"
    replies = Replies()
    out = []
    for start in range(0, len(wire), size):
        out += replies.feed(wire[start : start + size])
    assert out == [b"a", 2]


def test_error_replies_are_returned_as_redis_py_s_exceptions() -> None:
    noscript, other, blob, auth = Replies().feed(
        b"-NOSCRIPT No matching script.\r\n-ERR unknown command 'X'\r\n"
        b"!10\r\nERR blobby\r\n-WRONGPASS invalid username-password pair\r\n"
    )
    assert isinstance(noscript, NoScriptError)
    assert str(noscript) == "No matching script."
    assert type(other) is ResponseError
    assert str(other) == "ERR unknown command 'X'"
    assert type(blob) is ResponseError
    assert str(blob) == "ERR blobby"
    assert isinstance(auth, AuthenticationError)


@pytest.mark.parametrize(
    "wire",
    [b"?1\r\n", b"$x\r\n", b":1.5\r\n", b",fast\r\n"],
    ids=["unknown type", "length", "integer", "double"],
)
def test_bytes_that_are_not_resp_are_refused(wire: bytes) -> None:
    with pytest.raises(RespError):
        Replies().feed(wire)


def test_an_endless_reply_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resp, "MAX_BUFFERED", 100)
    replies = Replies()
    replies.feed(b"$1000\r\n" + b"x" * 90)
    with pytest.raises(RespError, match="longer than 100"):
        replies.feed(b"x" * 20)
