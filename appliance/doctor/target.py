"""The configuration doctor examines: parsed like `config validate`, env problems kept apart.

A file that does not parse is a usage error (nothing else can be checked). A backend secret
missing from the environment is a failed check: every other check can still run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from appliance.doctor.report import CheckResult, count, failed, passed, warned
from appliance.settings import Settings
from appliance.settings.kafka import kafka_password
from appliance.settings.loader import (
    ConfigError,
    LoadedConfig,
    load_text,
    parse_settings,
    resolve_credentials,
)


@dataclass(frozen=True, slots=True)
class DoctorTarget:
    config: LoadedConfig  # credentials of backends whose variables are unset are incomplete
    env_problems: tuple[str, ...]  # "file:line: key: reason": unset variables, unreadable files

    @property
    def settings(self) -> Settings:
        return self.config.settings


def load_target(text: str, source: str, environ: Mapping[str, str]) -> DoctorTarget:
    """Parse and validate `text`; ConfigError (file:line: key: reason) if it is unusable."""
    settings = parse_settings(text, source)
    try:
        return DoctorTarget(load_text(text, source, environ), ())
    except ConfigError as exc:  # parse_settings passed: only environment problems are left
        credentials, _ = resolve_credentials(settings, environ)
        password = kafka_password(settings.usage, environ)
        config = LoadedConfig(settings, credentials, source, kafka_password=password)
        return DoctorTarget(config, tuple(exc.problems))


def check_config(target: DoctorTarget) -> CheckResult:
    s = target.settings
    source = target.config.source
    if target.env_problems:
        return failed(
            "config",
            source,
            "; ".join(target.env_problems),
            "export the variable in the router's environment (systemd: EnvironmentFile=);"
            " put each file named there on this host",
        )
    counts = ", ".join(
        [
            count(len(s.backends), "backend"),
            count(len(s.models), "model"),
            count(len(s.keys), "key"),
        ]
    )
    if s.config_service.etcd_endpoints:
        # Backends, models, orgs and keys come from etcd; the etcd rows check it answers.
        return passed(
            "config", source, f"valid; routing policy from etcd {s.config_service.prefix}"
        )
    if not s.models:
        return warned(
            "config",
            source,
            f"valid, but no models: every request gets 404 ({counts})",
            "add a [[backends]] and a [[models]] table (see config/router.example.toml)",
        )
    return passed("config", source, f"valid ({counts})")
