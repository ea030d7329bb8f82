"""The [usage] Kafka security keys mapped onto aiokafka's own options, in this one place.

Every Kafka client routerctl makes (the usage sink's producer, its readiness probe, doctor,
`buffer replay --to kafka`) takes its options from `KafkaSecurity.client_options()` and
reaches the cluster for a probe through `connect_any`, which names an authentication or
TLS failure as such: aiokafka's own bootstrap reports every failure as "unable to bootstrap".
The password lives in one field that no repr, message or log line shows.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiokafka.conn import AIOKafkaConnection, create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

from appliance.settings import UsageSettings
from appliance.settings.kafka import SASL_PROTOCOLS, TLS_PROTOCOLS

_AUTH_ERRORS = (SaslAuthenticationFailed, IllegalSaslStateError, UnsupportedSaslMechanismError)


class KafkaSecurityError(ValueError):
    """The TLS files could not be loaded into a context (they changed since the config loaded)."""


class KafkaProbeError(Exception):
    """No bootstrap server could be reached; `kind` is "auth", "tls" or "unreachable"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """How to reach the brokers: protocol, SASL identity and the TLS context."""

    protocol: str = "PLAINTEXT"
    mechanism: str = "PLAIN"
    username: str = ""
    password: str = field(default="", repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, u: UsageSettings, password: str) -> KafkaSecurity:
        """Map the [usage] keys; `password` is the value kafka_password_env names."""
        context = None
        if u.kafka_security_protocol in TLS_PROTOCOLS:
            try:
                context = create_ssl_context(
                    cafile=u.kafka_ssl_ca_file or None,
                    certfile=u.kafka_ssl_cert_file or None,
                    keyfile=u.kafka_ssl_key_file or None,
                )
            except OSError as exc:  # ssl.SSLError included
                reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
                raise KafkaSecurityError(f"usage.kafka_ssl_*: cannot load: {reason}") from None
        return cls(
            protocol=u.kafka_security_protocol,
            mechanism=u.kafka_sasl_mechanism,
            username=u.kafka_username,
            password=password,
            ssl_context=context,
        )

    @property
    def sasl(self) -> bool:
        return self.protocol in SASL_PROTOCOLS

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer, AIOKafkaClient and create_conn."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.ssl_context is not None:
            options["ssl_context"] = self.ssl_context
        if self.sasl:
            options["sasl_mechanism"] = self.mechanism
            options["sasl_plain_username"] = self.username
            options["sasl_plain_password"] = self.password
        return options

    def describe(self) -> str:
        """'SASL_SSL, SCRAM-SHA-256 as user "router"' (no secret)."""
        if not self.sasl:
            return self.protocol
        return f'{self.protocol}, {self.mechanism} as user "{self.username}"'


@asynccontextmanager
async def connect_any(
    bootstrap: Sequence[str], security: KafkaSecurity, *, client_id: str, timeout_s: float
) -> AsyncIterator[AIOKafkaConnection]:
    """A connection (authenticated where SASL is on) to the first bootstrap server that takes
    one; KafkaProbeError naming the most telling failure when none does."""
    failures: list[tuple[str, str]] = []
    for server in bootstrap:
        host, _, port = server.rpartition(":")
        try:
            async with asyncio.timeout(timeout_s):
                conn = await create_conn(
                    host.strip("[]"),
                    int(port),
                    client_id=client_id,
                    request_timeout_ms=max(1, int(timeout_s * 1000)),
                    **security.client_options(),
                )
        except (KafkaError, OSError, ValueError) as exc:  # OSError: TimeoutError, ssl errors
            failures.append(classify(exc, security))
            continue
        try:
            yield conn
        finally:
            conn.close()
        return
    kind, detail = min(failures, key=lambda f: _RANK[f[0]], default=("unreachable", "none"))
    raise KafkaProbeError(kind, detail)


_RANK = {"auth": 0, "tls": 1, "unreachable": 2}


def classify(exc: BaseException, security: KafkaSecurity) -> tuple[str, str]:
    """(kind, one line) for a failed connect; never the broker's or the library's message,
    which could quote what the client sent."""
    if isinstance(exc, UnsupportedSaslMechanismError):
        return "auth", f"Kafka does not offer SASL {security.mechanism} ({security.describe()})"
    if isinstance(exc, _AUTH_ERRORS):
        who = f'SASL {security.mechanism} as user "{security.username}"'
        return "auth", f"Kafka refused the credentials ({who})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "tls", f"the broker's TLS certificate is not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return "tls", f"TLS handshake failed ({getattr(exc, 'reason', None) or type(exc).__name__})"
    if isinstance(exc, TimeoutError):
        return "unreachable", "no answer in time"
    return "unreachable", type(exc).__name__
