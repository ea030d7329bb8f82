"""Checks of the Kafka security keys in [usage]: how they combine, then what the host holds.

`kafka_security_problems` is schema logic (no I/O); `kafka_environment_problems` runs when a
router, doctor or replay loads the file: the password variable must be set and the TLS files
readable here. Messages name keys, variables and paths, never a value read from them.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.settings import Problem, UsageSettings

SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
TLS_PROTOCOLS = ("SSL", "SASL_SSL")
_FILES = ("kafka_ssl_ca_file", "kafka_ssl_cert_file", "kafka_ssl_key_file")


def kafka_security_problems(u: UsageSettings) -> list[Problem]:
    """Keys that contradict the security protocol, or each other."""
    protocol = u.kafka_security_protocol
    problems: list[Problem] = []
    sasl = protocol in SASL_PROTOCOLS
    for key in ("kafka_username", "kafka_password_env"):
        if sasl and not getattr(u, key):
            problems.append(
                (("usage", key), f'required when kafka_security_protocol = "{protocol}"')
            )
        elif not sasl and getattr(u, key):
            why = f"only used with SASL_PLAINTEXT or SASL_SSL, not {protocol}"
            problems.append((("usage", key), why))
    if protocol not in TLS_PROTOCOLS:
        problems += [
            (("usage", key), f"only used with SSL or SASL_SSL, not {protocol}")
            for key in _FILES
            if getattr(u, key)
        ]
    if bool(u.kafka_ssl_cert_file) != bool(u.kafka_ssl_key_file):
        problems.append(
            (
                ("usage", "kafka_ssl_cert_file"),
                "kafka_ssl_cert_file and kafka_ssl_key_file go together",
            )
        )
    return problems


def kafka_environment_problems(u: UsageSettings, environ: Mapping[str, str]) -> list[Problem]:
    """With the Kafka sink: the password variable is set, the TLS files load."""
    if u.sink != "kafka":
        return []
    problems: list[Problem] = []
    if u.kafka_password_env and not environ.get(u.kafka_password_env):
        problems.append(
            (
                ("usage", "kafka_password_env"),
                f"environment variable {u.kafka_password_env} is not set",
            )
        )
    if u.kafka_security_protocol in TLS_PROTOCOLS:
        problems += _tls_file_problems(u)
    return problems


def kafka_password(u: UsageSettings, environ: Mapping[str, str]) -> str:
    """The SASL password from the environment ("" without one)."""
    return environ.get(u.kafka_password_env, "") if u.kafka_password_env else ""


def _tls_file_problems(u: UsageSettings) -> list[Problem]:
    context = ssl.create_default_context()
    if u.kafka_ssl_ca_file:
        try:
            context.load_verify_locations(cafile=u.kafka_ssl_ca_file)
        except OSError as exc:
            what = "a PEM CA certificate"
            return [(("usage", "kafka_ssl_ca_file"), _unloadable(u.kafka_ssl_ca_file, what, exc))]
    if u.kafka_ssl_cert_file and u.kafka_ssl_key_file:
        try:
            context.load_cert_chain(u.kafka_ssl_cert_file, u.kafka_ssl_key_file)
        except OSError as exc:  # ssl.SSLError is an OSError
            where = f"{u.kafka_ssl_cert_file} with {u.kafka_ssl_key_file}"
            what = "a PEM certificate and its private key"
            return [(("usage", "kafka_ssl_cert_file"), _unloadable(where, what, exc))]
    return []


def _unloadable(path: str, what: str, exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"cannot load {path}: not {what} ({exc.reason or exc})"
    return f"cannot read {path}: {exc.strerror or exc}"
