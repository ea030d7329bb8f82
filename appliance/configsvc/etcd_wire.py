"""etcd's v3 JSON gateway on the wire: reply shapes, key codec and error classification.

The gateway (grpc-gateway v1) writes int64 fields as strings, bytes as base64, and leaves out
fields that hold their default (false, 0, empty, the PUT event type), so every field here has
a default and decoding is non-strict (it turns "42" into 42).
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from appliance.configsvc.etcd_errors import EtcdAuthError, EtcdError

T = TypeVar("T")

# gRPC status codes the gateway reports in error bodies.
GRPC_DEADLINE_EXCEEDED = 4
GRPC_NOT_FOUND = 5
GRPC_PERMISSION_DENIED = 7
GRPC_UNAVAILABLE = 14
GRPC_UNAUTHENTICATED = 16
_GRPC_RETRY_ELSEWHERE = {GRPC_DEADLINE_EXCEEDED, GRPC_UNAVAILABLE}
# Errors that a fresh token cures: expired or unknown token, auth store changed since login,
# no token sent yet.
_TOKEN_REASONS = ("invalid auth token", "auth store is old", "user name is empty")


class Header(msgspec.Struct):
    revision: int = 0
    member_id: int = 0


class WireKV(msgspec.Struct):
    key: bytes = b""
    value: bytes = b""
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0


class HeaderReply(msgspec.Struct):
    header: Header = msgspec.field(default_factory=Header)


class RangeReply(HeaderReply):
    kvs: list[WireKV] = msgspec.field(default_factory=list)
    more: bool = False


class DeleteReply(HeaderReply):
    deleted: int = 0


class TxnReply(HeaderReply):
    succeeded: bool = False


class LeaseReply(HeaderReply):
    id: int = msgspec.field(default=0, name="ID")
    ttl: int = msgspec.field(default=0, name="TTL")


class StatusReply(HeaderReply):
    version: str = ""
    db_size: int = msgspec.field(default=0, name="dbSize")
    leader: int = 0


class AuthReply(HeaderReply):
    token: str = ""


class WireEvent(msgspec.Struct):
    type: str = "PUT"
    kv: WireKV = msgspec.field(default_factory=WireKV)


class WatchReply(HeaderReply):
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""
    events: list[WireEvent] = msgspec.field(default_factory=list)


class UnaryError(msgspec.Struct):
    """The body of a non-200 unary answer."""

    error: str = ""
    code: int = 0
    message: str = ""


class StreamError(msgspec.Struct):
    grpc_code: int = 0
    http_code: int = 0
    message: str = ""


class WatchLine(msgspec.Struct):
    """One line of the streamed /v3/watch answer: a result, or an error that ends it."""

    result: WatchReply | None = None
    error: StreamError | None = None


class KeepAliveLine(msgspec.Struct):
    result: LeaseReply | None = None
    error: StreamError | None = None


_encoder = msgspec.json.Encoder()


def encode(payload: object) -> bytes:
    """JSON for the gateway; bytes become base64 as protobuf's JSON mapping wants."""
    return _encoder.encode(payload)


def decode(raw: bytes, reply_type: type[T], endpoint: str) -> T:
    try:
        return msgspec.json.decode(raw, type=reply_type, strict=False)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise EtcdError(f"{endpoint} sent an answer we cannot read: {exc}") from None


def key_bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def key_text(key: bytes) -> str:
    # surrogateescape: a key that is not UTF-8 still round-trips through key_bytes.
    return key.decode("utf-8", "surrogateescape")


def prefix_range_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix` (etcd's WithPrefix)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # empty prefix or all 0xff: every key


class TokenRejected(Exception):
    """The auth token (or its absence) was refused; a new one may cure it."""


class EndpointFailed(Exception):
    """This endpoint could not serve the request; another one may."""

    def __init__(self, endpoint: str, reason: str, *, tls: bool = False) -> None:
        super().__init__(f"{endpoint}: {reason}")
        self.endpoint = endpoint
        self.tls = tls


def classify(endpoint: str, grpc_code: int, http_status: int, reason: str) -> Exception:
    """The exception for an error answer: failover, re-authenticate, or give up."""
    text = f"{endpoint}: {reason or f'HTTP {http_status}'}"
    if grpc_code in _GRPC_RETRY_ELSEWHERE or (not grpc_code and http_status >= 500):
        return EndpointFailed(endpoint, reason or f"HTTP {http_status}")
    if grpc_code == GRPC_UNAUTHENTICATED or any(r in reason for r in _TOKEN_REASONS):
        return TokenRejected(text)
    if grpc_code == GRPC_PERMISSION_DENIED or "authentication failed" in reason:
        return EtcdAuthError(text)
    return EtcdError(text)


def classify_unary(endpoint: str, http_status: int, raw: bytes) -> Exception:
    try:
        body = msgspec.json.decode(raw, type=UnaryError, strict=False)
    except msgspec.DecodeError:
        # Not the gateway's JSON (e.g. a proxy's page, or etcd's plain-text 400 for a client
        # certificate with a CommonName): show its start.
        body = UnaryError(error=raw[:200].decode("utf-8", "replace").strip())
    return classify(endpoint, body.code, http_status, body.message or body.error)


def classify_stream(endpoint: str, error: StreamError) -> Exception:
    return classify(endpoint, error.grpc_code, error.http_code, error.message)
