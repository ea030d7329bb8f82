"""A TLS- and SASL-terminating front for the Tansu broker, which does neither (Tansu 0.6
refuses --cert with --key, and offers no PLAIN or SCRAM users).

The front listens on 127.0.0.1:`port` (Tansu is started advertising that port, so metadata
sends clients back through the front), optionally over TLS. With SASL on it answers
SaslHandshake (v0-1) and SaslAuthenticate (v0-2) itself, checking PLAIN or SCRAM-SHA-256/512
(RFC 5802/7677, server side) against `users`; ApiVersions goes to the broker unchanged, and
anything else before authentication closes the connection, as Kafka does. Once a client is
authenticated (at once without SASL) bytes pass through unchanged both ways.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.services import LOOPBACK

_API_VERSIONS, _HANDSHAKE, _AUTHENTICATE = 18, 17, 36
_UNSUPPORTED_MECHANISM, _AUTHENTICATION_FAILED = 33, 58
_SCRAM_HASHES: dict[str, Callable[..., hashlib._Hash]] = {
    "SCRAM-SHA-256": hashlib.sha256,
    "SCRAM-SHA-512": hashlib.sha512,
}
_SCRAM_ITERATIONS = 4096
_MAX_PRE_AUTH_FRAMES = 8  # ApiVersions, handshake, up to two SCRAM steps, and some slack


@dataclass
class FrontMode:
    """What the front demands: TLS when `tls` is set, SASL when `mechanisms` is not empty."""

    tls: ssl.SSLContext | None = None
    mechanisms: tuple[str, ...] = ()
    users: dict[str, str] = field(default_factory=dict)  # name -> password; a test may edit it


@dataclass
class FrontStats:
    authenticated: int = 0
    refused: int = 0
    passed_through: int = 0  # connections piped to the broker

    def count(self, verdict: bool) -> None:
        if verdict:
            self.authenticated += 1
        else:
            self.refused += 1


class KafkaFront:
    """`async with KafkaFront(port, broker_host, broker_port, mode) as front:`"""

    def __init__(self, port: int, broker: tuple[str, int], mode: FrontMode) -> None:
        self.port = port
        self.broker = broker
        self.mode = mode
        self.stats = FrontStats()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    async def __aenter__(self) -> KafkaFront:
        self._server = await asyncio.start_server(
            self._serve, LOOPBACK, self.port, ssl=self.mode.tls, reuse_address=True
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        broker: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            broker = await asyncio.open_connection(*self.broker)
            self._writers.add(broker[1])
            if self.mode.mechanisms and not await self._authenticate(reader, writer, *broker):
                return
            self.stats.passed_through += 1
            await asyncio.gather(_copy(reader, broker[1]), _copy(broker[0], writer))
        except (OSError, asyncio.IncompleteReadError):
            pass  # a client or the broker went away: so does the connection
        finally:
            for w in (writer, broker[1] if broker else None):
                if w is not None:
                    w.close()
                    self._writers.discard(w)

    async def _authenticate(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        broker_reader: asyncio.StreamReader,
        broker_writer: asyncio.StreamWriter,
    ) -> bool:
        session: _Session | None = None
        for _ in range(_MAX_PRE_AUTH_FRAMES):
            frame = await _read_frame(reader)
            api_key, version, correlation = struct.unpack_from(">hhi", frame)
            if api_key == _API_VERSIONS:
                broker_writer.write(_framed(frame))
                writer.write(_framed(await _read_frame(broker_reader)))
            elif api_key == _HANDSHAKE:
                mechanism = _Reader(frame, 8).header_v1().string()
                known = mechanism in self.mode.mechanisms
                writer.write(_framed(_handshake_response(correlation, known, self.mode.mechanisms)))
                if not known:
                    return False
                session = _Session.start(mechanism, self.mode.users)
            elif api_key == _AUTHENTICATE and session is not None:
                token = _authenticate_token(frame, version)
                reply, verdict = session.step(token)
                error = {None: 0, True: 0, False: _AUTHENTICATION_FAILED}[verdict]
                writer.write(_framed(_authenticate_response(correlation, version, error, reply)))
                await writer.drain()
                if verdict is not None:
                    self.stats.count(verdict)
                    return verdict
            else:
                return False  # not allowed before authentication
            await writer.drain()
        return False


# -- SASL sessions -------------------------------------------------------------------------
class _Session:
    """One client's SASL exchange: step() -> (reply, None while going on | True | False)."""

    @staticmethod
    def start(mechanism: str, users: dict[str, str]) -> _Session:
        if mechanism == "PLAIN":
            return _Plain(users)
        return _Scram(_SCRAM_HASHES[mechanism], users)

    def step(self, token: bytes) -> tuple[bytes, bool | None]:
        raise NotImplementedError


class _Plain(_Session):
    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def step(self, token: bytes) -> tuple[bytes, bool | None]:
        parts = token.split(b"\0")
        if len(parts) != 3:
            return b"", False
        _, user, password = (p.decode(errors="replace") for p in parts)
        expected = self.users.get(user)
        return b"", expected is not None and hmac.compare_digest(expected, password)


class _Scram(_Session):
    """RFC 5802 server: client-first -> server-first, client-final -> server-final."""

    def __init__(self, hash_: Callable[..., hashlib._Hash], users: dict[str, str]) -> None:
        self.hash = hash_
        self.users = users
        self.first: tuple[str, str, bytes, bytes] | None = None  # auth msg part, nonce, keys

    def _hmac(self, key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, self.hash).digest()

    def step(self, token: bytes) -> tuple[bytes, bool | None]:
        text = token.decode(errors="replace")
        if self.first is None:
            return self._server_first(text), None
        return self._server_final(text)

    def _server_first(self, client_first: str) -> bytes:
        bare = client_first.split(",", 2)[2]  # after the gs2 header "n,,"
        fields = dict(part.split("=", 1) for part in bare.split(","))
        user = fields["n"].replace("=2C", ",").replace("=3D", "=")
        # An unknown user gets a random password: it fails at the end, like a wrong one.
        password = self.users.get(user) or base64.b64encode(os.urandom(18)).decode()
        salt = os.urandom(16)
        salted = hashlib.pbkdf2_hmac(self.hash().name, password.encode(), salt, _SCRAM_ITERATIONS)
        nonce = fields["r"] + base64.b64encode(os.urandom(18)).decode()
        server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i={_SCRAM_ITERATIONS}"
        stored_key = self.hash(self._hmac(salted, b"Client Key")).digest()
        server_key = self._hmac(salted, b"Server Key")
        self.first = (f"{bare},{server_first}", nonce, stored_key, server_key)
        return server_first.encode()

    def _server_final(self, client_final: str) -> tuple[bytes, bool]:
        assert self.first is not None
        so_far, nonce, stored_key, server_key = self.first
        without_proof, _, proof = client_final.rpartition(",p=")
        fields = dict(part.split("=", 1) for part in without_proof.split(","))
        if fields.get("r") != nonce:
            return b"", False
        auth_message = f"{so_far},{without_proof}".encode()
        signature = self._hmac(stored_key, auth_message)
        client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature, strict=False))
        if not hmac.compare_digest(self.hash(client_key).digest(), stored_key):
            return b"", False
        verifier = base64.b64encode(self._hmac(server_key, auth_message)).decode()
        return f"v={verifier}".encode(), True


# -- Kafka wire format ---------------------------------------------------------------------
class _Reader:
    def __init__(self, data: bytes, offset: int) -> None:
        self.data, self.at = data, offset

    def _take(self, n: int) -> bytes:
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def int16(self) -> int:
        return int(struct.unpack(">h", self._take(2))[0])

    def int32(self) -> int:
        return int(struct.unpack(">i", self._take(4))[0])

    def uvarint(self) -> int:
        value = shift = 0
        for _ in range(5):
            byte = self._take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise ValueError("varint too long")

    def string(self) -> str:
        size = self.int16()
        return "" if size < 0 else self._take(size).decode()

    def tagged_fields(self) -> _Reader:
        for _ in range(self.uvarint()):
            self.uvarint()
            self._take(self.uvarint())
        return self

    def header_v1(self) -> _Reader:
        """Skip the client id (the fixed part was read by the caller)."""
        self.string()
        return self


def _authenticate_token(frame: bytes, version: int) -> bytes:
    reader = _Reader(frame, 8).header_v1()
    # v2 is flexible: its header has tagged fields and the bytes are compact
    size = reader.tagged_fields().uvarint() - 1 if version >= 2 else reader.int32()
    return reader._take(max(size, 0))


def _authenticate_response(correlation: int, version: int, error: int, token: bytes) -> bytes:
    message = "Authentication failed: invalid credentials" if error else None
    if version >= 2:
        text = b"\x00" if message is None else _uvarint(len(message) + 1) + message.encode()
        return (
            struct.pack(">ib", correlation, 0) + struct.pack(">h", error) + text
            + _uvarint(len(token) + 1) + token + struct.pack(">q", 0) + b"\x00"
        )  # fmt: skip
    text = struct.pack(">h", -1) if message is None else _string(message)
    body = struct.pack(">ih", correlation, error) + text + struct.pack(">i", len(token)) + token
    return body + (struct.pack(">q", 0) if version == 1 else b"")


def _handshake_response(correlation: int, known: bool, mechanisms: tuple[str, ...]) -> bytes:
    error = 0 if known else _UNSUPPORTED_MECHANISM
    listed = b"".join(_string(m) for m in mechanisms)
    return struct.pack(">ihi", correlation, error, len(mechanisms)) + listed


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _framed(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Bytes from one side to the other until either side closes."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()
