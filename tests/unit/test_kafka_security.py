"""Kafka security keys: validation at load, the one mapping onto aiokafka, and no leak of
the password through a repr, an error or `config show`."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest
from aiokafka.errors import SaslAuthenticationFailed, UnsupportedSaslMechanismError
from typer.testing import CliRunner

from appliance.settings import UsageSettings
from appliance.settings.loader import ConfigError, load_text
from appliance.usage.kafka_security import KafkaSecurity, KafkaSecurityError, classify
from appliance.usage.kafka_sink import KafkaSink
from routerctl.main import app
from tests.certs import make_certs

CANARY = "CANARY-kafka-secret-41c7"
ENV = {"KAFKA_PW": CANARY}


def usage(**keys: str) -> str:
    body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in keys.items())
    return f'[usage]\nsink = "kafka"\nkafka_bootstrap = ["127.0.0.1:9092"]\n{body}\n'


def problems_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(text, "r.toml", environ or {})
    return caught.value.problems


SASL = {
    "kafka_security_protocol": "SASL_PLAINTEXT",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_username": "router",
    "kafka_password_env": "KAFKA_PW",
}


def test_plaintext_is_the_default_and_maps_to_no_credentials() -> None:
    """Without security keys the client options are PLAINTEXT only."""
    loaded = load_text(usage(), "r.toml", {})
    options = KafkaSecurity.from_settings(loaded.settings.usage, loaded.kafka_password)
    assert options.client_options() == {"security_protocol": "PLAINTEXT"}


def test_sasl_maps_onto_aiokafka_options_with_the_password_from_the_environment() -> None:
    """SASL keys become aiokafka's sasl_* options; the password is the variable's value."""
    loaded = load_text(usage(**SASL), "r.toml", ENV)
    options = KafkaSecurity.from_settings(loaded.settings.usage, loaded.kafka_password)
    assert options.client_options() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "router",
        "sasl_plain_password": CANARY,
    }
    assert CANARY not in repr(loaded) + repr(options) + options.describe()


def test_ssl_maps_onto_a_verifying_context_from_the_ca_file(tmp_path: Path) -> None:
    """SSL gives aiokafka an ssl_context that checks hostnames against the configured CA."""
    certs = make_certs(tmp_path)
    text = usage(
        kafka_security_protocol="SSL",
        kafka_ssl_ca_file=str(certs.ca_file),
        kafka_ssl_cert_file=str(certs.client_cert_file),
        kafka_ssl_key_file=str(certs.client_key_file),
    )
    loaded = load_text(text, "r.toml", {})
    options = KafkaSecurity.from_settings(loaded.settings.usage, "").client_options()
    assert options["security_protocol"] == "SSL"
    assert set(options) == {
        "security_protocol",
        "ssl_context",
    }
    context = options["ssl_context"]
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1


@pytest.mark.parametrize(
    ("keys", "env", "expected"),
    [
        (
            {"kafka_security_protocol": "SASL_SSL"},
            {},
            [
                'usage.kafka_username: required when kafka_security_protocol = "SASL_SSL"',
                'usage.kafka_password_env: required when kafka_security_protocol = "SASL_SSL"',
            ],
        ),
        (SASL, {}, ["usage.kafka_password_env: environment variable KAFKA_PW is not set"]),
        (
            {"kafka_username": "router"},
            {},
            ["usage.kafka_username: only used with SASL_PLAINTEXT or SASL_SSL, not PLAINTEXT"],
        ),
        (
            {"kafka_ssl_ca_file": "/x.pem"},
            {},
            ["usage.kafka_ssl_ca_file: only used with SSL or SASL_SSL, not PLAINTEXT"],
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_cert_file": "/c.pem"},
            {},
            ["usage.kafka_ssl_cert_file: kafka_ssl_cert_file and kafka_ssl_key_file go together"],
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_ca_file": "/nowhere/ca.pem"},
            {},
            ["usage.kafka_ssl_ca_file: cannot read /nowhere/ca.pem: No such file or directory"],
        ),
        (
            {"kafka_sasl_mechanism": "GSSAPI"},
            {},
            [
                "usage.kafka_sasl_mechanism: 'GSSAPI' is not allowed; one of 'PLAIN',"
                " 'SCRAM-SHA-256', 'SCRAM-SHA-512'"
            ],
        ),
    ],
    ids=[
        "sasl-without-identity",
        "unset-variable",
        "username-without-sasl",
        "ca-without-tls",
        "cert-without-key",
        "missing-file",
        "unknown-mechanism",
    ],
)
def test_security_keys_are_validated_at_load(
    keys: dict[str, str], env: dict[str, str], expected: list[str]
) -> None:
    """Each contradiction, unset variable or unreadable file is one line naming the key."""
    found = [p.split(": ", 1)[1] for p in problems_of(usage(**keys), env)]
    assert found == expected


def test_a_file_that_is_not_pem_is_refused_at_load(tmp_path: Path) -> None:
    """A CA file that holds no certificate is a start-up error, not a handshake failure."""
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    text = usage(kafka_security_protocol="SSL", kafka_ssl_ca_file=str(bad))
    (problem,) = problems_of(text)
    assert f"usage.kafka_ssl_ca_file: cannot load {bad}: not a PEM CA certificate" in problem


def test_files_that_vanish_after_load_are_a_security_error(tmp_path: Path) -> None:
    """The mapping raises KafkaSecurityError (naming no secret) when a file cannot load."""
    u = UsageSettings(
        sink="kafka", kafka_security_protocol="SSL", kafka_ssl_ca_file=str(tmp_path / "gone.pem")
    )
    with pytest.raises(KafkaSecurityError, match=r"usage\.kafka_ssl_"):
        KafkaSecurity.from_settings(u, CANARY)


def test_auth_and_tls_failures_are_classified_without_the_secret() -> None:
    """A refused login, an unoffered mechanism and a TLS failure each read as such."""
    security = KafkaSecurity(
        protocol="SASL_SSL", mechanism="PLAIN", username="router", password=CANARY
    )
    assert classify(SaslAuthenticationFailed(f"bad {CANARY}"), security) == (
        "auth",
        'Kafka refused the credentials (SASL PLAIN as user "router")',
    )
    kind, text = classify(UnsupportedSaslMechanismError("x"), security)
    assert kind == "auth"
    assert text.startswith("Kafka does not offer SASL PLAIN")
    assert classify(ssl.SSLError(1, "[SSL] wrong version number"), security)[0] == "tls"
    assert classify(ConnectionRefusedError(), security) == ("unreachable", "ConnectionRefusedError")


def test_config_show_never_prints_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`config show` prints the variable's name, never its value."""
    monkeypatch.setenv("KAFKA_PW", CANARY)
    path = tmp_path / "r.toml"
    path.write_text(usage(**SASL))
    result = CliRunner().invoke(app, ["config", "show", str(path)])
    assert result.exit_code == 0, result.output
    assert '"kafka_password_env": "KAFKA_PW"' in result.output
    assert CANARY not in result.output


def test_producer_is_idempotent_only_with_acks_all() -> None:
    """aiokafka refuses idempotence with acks=1, so the sink asks for it only with acks=all."""
    assert KafkaSink(["127.0.0.1:9092"], {"usage": "u"}, acks="all").idempotent
    assert not KafkaSink(["127.0.0.1:9092"], {"usage": "u"}, acks="1").idempotent
