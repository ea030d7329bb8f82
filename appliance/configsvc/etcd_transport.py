"""HTTP to etcd's JSON gateway: endpoint failover, TLS, and the auth token.

Every request goes to the endpoint that answered last; on a connection error, a timeout, a
5xx or an Unavailable answer (no leader, leader changed) it moves on to the next endpoint,
trying each once per request. A write that timed out may still have been applied by the
first endpoint, so a retried txn can report a failed compare for its own earlier success:
callers re-read, as they must after any failed compare.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp

from appliance.configsvc.etcd_errors import EtcdAuthError, EtcdError, EtcdUnavailable
from appliance.configsvc.etcd_wire import (
    AuthReply,
    EndpointFailed,
    StatusReply,
    TokenRejected,
    classify_unary,
    decode,
    encode,
)

T = TypeVar("T")
Parse = Callable[[str, bytes], T]
_NETWORK_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)
NO_CREDENTIALS = "; etcd has auth enabled: configure a username and password"


def unary(reply_type: type[T]) -> Parse[T]:
    """Parse a plain JSON answer as `reply_type`."""
    return lambda endpoint, raw: decode(raw, reply_type, endpoint)


def checked_endpoint(url: str) -> str:
    """`scheme://host:port` of an endpoint URL, or ValueError that does not echo secrets."""
    parts = urlsplit(url.strip())
    if parts.username or parts.password:
        raise ValueError("an etcd endpoint must not carry credentials; use username/password")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"etcd endpoint {url!r} must look like http(s)://host:port")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"etcd endpoint {url!r} must have no path, query or fragment")
    return f"{parts.scheme}://{parts.netloc}"


class EtcdTransport:
    """One pooled HTTP session to a set of etcd endpoints."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        credentials: tuple[str, str] | None,
        ssl_context: ssl.SSLContext | None,
        timeout_s: float,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.endpoints = tuple(checked_endpoint(url) for url in endpoints)
        self.timeout_s = timeout_s
        self._credentials = credentials
        self._ssl_context = ssl_context
        self._current = 0
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        # Streams live as long as the caller reads; waiting for headers is bounded apart.
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s)

    @property
    def has_credentials(self) -> bool:
        return self._credentials is not None

    async def open(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl_context or True)
            self._session = aiohttp.ClientSession(connector=connector)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def call(self, path: str, payload: Mapping[str, object], parse: Parse[T]) -> T:
        """POST to the gateway with failover, re-authenticating once if the token is refused."""
        body = encode(payload)
        token = await self.token()
        try:
            return await self._post_any(path, body, token, parse)
        except TokenRejected as exc:
            if self._credentials is None:
                raise EtcdAuthError(f"{exc}{NO_CREDENTIALS}") from None
            token = await self.refresh_token(token)
        try:
            return await self._post_any(path, body, token, parse)
        except TokenRejected as exc:
            raise EtcdAuthError(f"{exc} (with a fresh token)") from None

    async def status_of(self, endpoint: str) -> StatusReply:
        """The status of one endpoint, without failover (for probes)."""
        try:
            return await self._attempt(endpoint, "/v3/maintenance/status", b"{}", None,
                                       unary(StatusReply))  # fmt: skip
        except EndpointFailed as exc:
            raise EtcdUnavailable(str(exc)) from None
        except TokenRejected as exc:
            raise EtcdAuthError(str(exc)) from None

    async def token(self) -> str | None:
        """The auth token to send, logging in first if there is none yet."""
        if self._credentials is None:
            return None
        if self._token is None:
            return await self.refresh_token(None)
        return self._token

    async def refresh_token(self, stale: str | None) -> str | None:
        """Log in again, unless another task already replaced `stale`."""
        if self._credentials is None:
            return None
        async with self._auth_lock:
            if self._token is not None and self._token != stale:
                return self._token
            user, password = self._credentials
            body = encode({"name": user, "password": password})
            try:
                reply = await self._post_any("/v3/auth/authenticate", body, None,
                                             unary(AuthReply))  # fmt: skip
            except (TokenRejected, EtcdAuthError) as exc:
                raise EtcdAuthError(f"etcd refused user {user!r}: {exc}") from None
            except EtcdError as exc:
                if "authentication is not enabled" not in str(exc):
                    raise
                reply = AuthReply()  # etcd without auth: send no token
            self._token = reply.token
            return self._token

    async def open_stream(
        self, path: str, payload: Mapping[str, object], token: str | None,
        headers: Mapping[str, str],
    ) -> tuple[str, aiohttp.ClientResponse]:  # fmt: skip
        """Start a streamed POST on the first endpoint that answers 200; the caller closes it."""
        body = encode(payload)

        async def start(endpoint: str) -> tuple[str, aiohttp.ClientResponse]:
            return endpoint, await self._start_stream(endpoint, path, body, token, headers)

        return await self._failover(start)

    async def _post_any(self, path: str, body: bytes, token: str | None, parse: Parse[T]) -> T:
        return await self._failover(
            lambda endpoint: self._attempt(endpoint, path, body, token, parse)
        )

    async def _failover(self, attempt: Callable[[str], Awaitable[T]]) -> T:
        """`attempt` on each endpoint in turn, from the last good one, until one answers."""
        failures: list[EndpointFailed] = []
        for endpoint in self._rotation():
            try:
                result = await attempt(endpoint)
            except EndpointFailed as exc:
                failures.append(exc)
                continue
            self._prefer(endpoint)
            return result
        raise self._all_failed(failures)

    async def _attempt(
        self, endpoint: str, path: str, body: bytes, token: str | None, parse: Parse[T]
    ) -> T:
        session = self._live_session()
        try:
            async with session.post(endpoint + path, data=body, headers=self._headers(token),
                                    timeout=self._timeout) as response:  # fmt: skip
                status = response.status
                raw = await response.read()
        except _NETWORK_ERRORS as exc:
            raise self._failure(endpoint, exc) from None
        if status != 200:
            raise classify_unary(endpoint, status, raw)
        return parse(endpoint, raw)

    async def _start_stream(
        self, endpoint: str, path: str, body: bytes, token: str | None,
        headers: Mapping[str, str],
    ) -> aiohttp.ClientResponse:  # fmt: skip
        session = self._live_session()
        all_headers = {**self._headers(token), **headers}
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await session.post(endpoint + path, data=body, headers=all_headers,
                                              timeout=self._stream_timeout)  # fmt: skip
        except _NETWORK_ERRORS as exc:
            raise self._failure(endpoint, exc) from None
        if response.status == 200:
            return response
        try:
            async with asyncio.timeout(self.timeout_s):
                raw = await response.read()
        except _NETWORK_ERRORS:
            raw = b""
        finally:
            response.close()
        raise classify_unary(endpoint, response.status, raw)

    def _live_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            raise EtcdError("the etcd client is not open")
        return self._session

    def _headers(self, token: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = token  # etcd's gateway wants the bare token
        return headers

    def _rotation(self) -> list[str]:
        count = len(self.endpoints)
        return [self.endpoints[(self._current + i) % count] for i in range(count)]

    def _prefer(self, endpoint: str) -> None:
        self._current = self.endpoints.index(endpoint)

    def _failure(self, endpoint: str, exc: BaseException) -> EndpointFailed:
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            reason = getattr(exc.certificate_error, "verify_message", "") or exc.certificate_error
            return EndpointFailed(
                endpoint, f"its TLS certificate is not trusted (check ca_file): {reason}", tls=True
            )
        if (tls_error := _ssl_error(exc)) is not None:
            return EndpointFailed(
                endpoint,
                "TLS handshake refused; it may require a client certificate or not accept ours "
                f"(check cert_file and key_file): {tls_error.reason or tls_error}",
                tls=True,
            )
        if isinstance(exc, TimeoutError):
            return EndpointFailed(endpoint, f"no answer within {self.timeout_s:g} s")
        return EndpointFailed(endpoint, str(exc) or type(exc).__name__)

    def _all_failed(self, failures: list[EndpointFailed]) -> EtcdError:
        detail = "; ".join(str(failure) for failure in failures)
        if any(failure.tls for failure in failures):
            return EtcdAuthError(f"no etcd endpoint completed a TLS handshake: {detail}")
        return EtcdUnavailable(f"no etcd endpoint answered: {detail}")


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The ssl error behind an aiohttp error, if any (aiohttp wraps it in several ways)."""
    for candidate in (getattr(exc, "os_error", None), exc.__cause__, exc.__context__, exc):
        if isinstance(candidate, ssl.SSLError):
            return candidate
    return None
