"""Checks of the Redis keys in [state]: how the mode and its keys combine, then the host.

`redis_problems` is schema logic (no I/O); `redis_environment_problems` runs when a router
or doctor loads the file: the password variable must be set and the CA file readable here.
Messages name keys, variables and paths, never a value read from them.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.settings import Problem, StateSettings

_URL_SCHEMES = ("redis://", "rediss://", "unix://")


def redis_problems(s: StateSettings) -> list[Problem]:
    """Keys that contradict `redis_mode`, or each other."""
    problems: list[Problem] = []
    if s.redis_url and not s.redis_url.startswith(_URL_SCHEMES):
        problems.append((("state", "redis_url"), "must start with redis://, rediss:// or unix://"))
    if s.redis_mode == "standalone":
        if s.redis_endpoints:
            why = 'only used with redis_mode = "sentinel" or "cluster"; standalone takes redis_url'
            problems.append((("state", "redis_endpoints"), why))
    else:
        problems += _endpoint_problems(s)
    if s.redis_sentinel_master and s.redis_mode != "sentinel":
        why = f'only used with redis_mode = "sentinel", not "{s.redis_mode}"'
        problems.append((("state", "redis_sentinel_master"), why))
    if s.redis_mode == "sentinel" and not s.redis_sentinel_master:
        why = 'required when redis_mode = "sentinel": the master name the sentinels monitor'
        problems.append((("state", "redis_sentinel_master"), why))
    if s.redis_username and s.redis_password_env is None:
        problems.append((("state", "redis_username"), "redis_username needs redis_password_env"))
    if not (s.redis_url or s.redis_endpoints):
        problems += [
            (("state", key), "only used with redis_url or redis_endpoints")
            for key in ("redis_username", "redis_password_env", "redis_tls_ca_file")
            if getattr(s, key)
        ]
    return problems


def _endpoint_problems(s: StateSettings) -> list[Problem]:
    mode = s.redis_mode
    problems: list[Problem] = []
    if not s.redis_endpoints:
        what = "the sentinels" if mode == "sentinel" else "seed nodes"
        why = f'required when redis_mode = "{mode}": {what}, as ["host:port", ...]'
        problems.append((("state", "redis_endpoints"), why))
    if s.redis_url:
        why = f'redis_mode = "{mode}" connects through redis_endpoints; leave redis_url empty'
        problems.append((("state", "redis_url"), why))
    for i, endpoint in enumerate(s.redis_endpoints):
        host, sep, port = endpoint.rpartition(":")
        if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
            problems.append((("state", "redis_endpoints", i), "expected host:port"))
    return problems


def redis_environment_problems(s: StateSettings, environ: Mapping[str, str]) -> list[Problem]:
    """With Redis configured: the password variable is set, the CA file loads."""
    problems: list[Problem] = []
    if s.redis_password_env and not environ.get(s.redis_password_env):
        why = f"environment variable {s.redis_password_env} is not set"
        problems.append((("state", "redis_password_env"), why))
    if s.redis_tls_ca_file:
        try:
            ssl.create_default_context().load_verify_locations(cafile=s.redis_tls_ca_file)
        except (OSError, ssl.SSLError) as exc:
            why = f"{s.redis_tls_ca_file}: not a readable PEM CA certificate ({type(exc).__name__})"
            problems.append((("state", "redis_tls_ca_file"), why))
    return problems


def redis_password(s: StateSettings, environ: Mapping[str, str]) -> str | None:
    """The password from the environment (None without one)."""
    return environ.get(s.redis_password_env) or None if s.redis_password_env else None
