"""The TOML schema: immutable msgspec Structs with a default for every setting.

Loading, line-precise errors and environment lookups live in `settings.loader`; this
module only says what a valid configuration is.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from appliance.settings.kafka import kafka_security_problems
from appliance.settings.redis import redis_problems

PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegFloat = Annotated[float, Meta(ge=0)]
ADMIN_ON_PUBLIC = "public"  # [server] admin_listen: the admin routes on the public listener
NonNegInt = Annotated[int, Meta(ge=0)]
Identifier = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]
Sha256Hex = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
HeaderName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9-]{1,128}$")]
EnvName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class _Section(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Every section: immutable, and a typo in a key is an error, never ignored."""


class ServerSettings(_Section, frozen=True):
    listen: str = "127.0.0.1:8080"
    metrics_listen: str = "127.0.0.1:9090"  # "" turns the metrics listener off
    # The admin routes' own listener (with status and the OpenAPI document); "public" serves
    # them on `listen` instead.
    admin_listen: str = "127.0.0.1:8081"
    workers: Annotated[int, Meta(ge=1, le=64)] = 1
    # "routerctl": the built-in HTTP/1.1 server on llhttp; "hypercorn": the h11-based one.
    engine: Literal["routerctl", "hypercorn"] = "routerctl"
    # What carries requests to backends: the built-in HTTP/1.1 client on llhttp, or aiohttp.
    upstream_client: Literal["routerctl", "aiohttp"] = "routerctl"
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 4 * 1024 * 1024
    body_read_timeout_s: PositiveFloat = 30.0
    header_timeout_s: PositiveFloat = 10.0  # from a head's first byte to its end, else 408
    max_header_bytes: Annotated[int, Meta(ge=1024, le=1024 * 1024)] = 16 * 1024
    keep_alive_timeout_s: PositiveFloat = 75.0
    keep_alive_max_requests: Annotated[int, Meta(ge=1)] = 10_000
    graceful_shutdown_s: NonNegFloat = 30.0
    shutdown_delay_s: NonNegFloat = 0.0  # readyz 503 but still accepting, before the drain


class StateSettings(_Section, frozen=True):
    dir: str = "./routerctl-state"
    redis_url: str = ""  # standalone: redis://[user@]host:port/db, rediss:// for TLS
    redis_failure_mode: Literal["open", "closed"] = "open"
    redis_mode: Literal["standalone", "sentinel", "cluster"] = "standalone"
    redis_endpoints: tuple[str, ...] = ()  # sentinel: the sentinels; cluster: seed nodes
    redis_sentinel_master: str = ""  # the master name the sentinels monitor
    redis_username: str = ""  # ACL user (with redis_password_env)
    redis_password_env: EnvName | None = None  # the variable holding the password
    redis_tls: bool = False  # TLS to every node (implied by rediss:// or redis_tls_ca_file)
    redis_tls_ca_file: str = ""
    # Free space kept on the state dir's filesystem: below it new requests are refused (503)
    # before any backend is called, so a record always has room. 0 turns the check off.
    min_free_mb: NonNegFloat = 64.0

    @property
    def redis_configured(self) -> bool:
        """Limits and spend are shared in Redis (else kept in this process)."""
        return bool(self.redis_url or self.redis_endpoints)


class AdminToken(_Section, frozen=True):
    id: Identifier
    sha256: Sha256Hex
    role: Literal["viewer", "operator"] = "viewer"


class AdminSettings(_Section, frozen=True):
    tokens: tuple[AdminToken, ...] = ()


class TelemetrySettings(_Section, frozen=True):
    service_name: str = "routerctl"
    otlp_endpoint: str = ""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    access_log: bool = True


class RoutingSettings(_Section, frozen=True):
    """Health checking, outlier ejection and failover; defaults follow Envoy's where it has one."""

    health_interval_s: PositiveFloat = 5.0  # active probe period per backend (jittered ±10 %)
    health_timeout_s: PositiveFloat = 2.0
    healthy_threshold: Annotated[int, Meta(ge=1)] = 2  # probe successes to become healthy
    unhealthy_threshold: Annotated[int, Meta(ge=1)] = 3  # probe failures to become unhealthy
    consecutive_failures: Annotated[int, Meta(ge=1)] = 5  # request failures that eject
    base_ejection_s: PositiveFloat = 30.0  # ejection time = base x times ejected, capped
    max_ejection_s: PositiveFloat = 300.0
    max_ejection_percent: Annotated[int, Meta(ge=0, le=100)] = 50  # of a model's backends
    max_retries: Annotated[int, Meta(ge=0, le=5)] = 2  # other backends tried before giving up
    retry_budget_ratio: Annotated[float, Meta(ge=0, le=1)] = 0.2  # retries per request
    retry_budget_min_per_s: NonNegFloat = 3.0  # retries always allowed at a trickle


class ConfigServiceSettings(_Section, frozen=True):
    """etcd, when set: backends, models, orgs, keys and overrides come from it, live."""

    etcd_endpoints: tuple[str, ...] = ()  # "https://etcd-0:2379", ...; () = no config service
    prefix: Annotated[str, Meta(pattern=r"^/[A-Za-z0-9_./-]*/$")] = "/routerctl/"
    username: str = ""
    password_env: EnvName | None = None  # the variable holding the password
    ca_file: str = ""
    cert_file: str = ""  # client certificate (mutual TLS), with key_file
    key_file: str = ""
    timeout_s: PositiveFloat = 3.0  # each etcd request; also how long start waits for etcd


ReadinessComponent = Literal["redis", "kafka", "config_service", "backend_registry", "usage_buffer"]


class HealthSettings(_Section, frozen=True):
    """Readiness (`/v1/status/readyz`): which components count, and how they are probed."""

    required: tuple[ReadinessComponent, ...] = ()  # empty: every configured component
    readiness_timeout_s: PositiveFloat = 1.0  # per probe
    cache_s: NonNegFloat = 1.0  # one probe round answers every readiness call this long


class UsageSettings(_Section, frozen=True):
    """Usage records: the durable outbox in the state dir and where it is published."""

    sink: Literal["file", "kafka", "none"] = "file"
    file_path: str = ""  # "" = {state.dir}/usage.jsonl
    file_max_mb: PositiveFloat = 100.0  # rotate the JSON-lines file at this size
    file_keep: Annotated[int, Meta(ge=1, le=1000)] = 10  # rotated files kept
    kafka_bootstrap: tuple[str, ...] = ()
    kafka_topic: str = "routerctl.usage"
    kafka_audit_topic: str = "routerctl.audit"
    kafka_acks: Literal["all", "1"] = "all"
    kafka_compression: Literal["none", "gzip"] = "gzip"
    # Security: names follow Kafka's client settings; the password comes from the environment.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_username: str = ""
    kafka_password_env: EnvName | None = None  # the variable holding the SASL password
    kafka_ssl_ca_file: str = ""  # "" = the system's trusted CAs
    kafka_ssl_cert_file: str = ""  # client certificate (mutual TLS), with kafka_ssl_key_file
    kafka_ssl_key_file: str = ""
    max_buffer_mb: PositiveFloat = 512.0  # outbox bound
    on_full: Literal["reject", "drop_oldest"] = "reject"
    batch_max: Annotated[int, Meta(ge=1, le=10_000)] = 500  # records per publish
    lookup_retention_days: PositiveFloat = 30.0  # GET /v1/usage/{id} answers this long


class Backend(_Section, frozen=True):
    id: Identifier
    url: str  # base URL including the API prefix, e.g. "http://10.0.0.5:8000/v1"
    api_key_env: EnvName | None = None  # sent as "Authorization: Bearer $VALUE"
    headers: dict[HeaderName, str] = {}  # non-secret extra headers
    secret_headers: dict[HeaderName, EnvName] = {}  # header name -> env var holding its value
    weight: NonNegFloat = 1.0
    health_path: str = "/health"
    connect_timeout_s: PositiveFloat = 2.0
    ttfb_timeout_s: PositiveFloat = 60.0
    total_timeout_s: PositiveFloat = 600.0
    stream_idle_timeout_s: PositiveFloat = 60.0  # longest silence between stream chunks
    max_concurrency: NonNegInt = 0  # 0 = unlimited


class ModelRoute(_Section, frozen=True):
    backend: Identifier
    upstream_model: str = ""  # "" = the client's model name unchanged
    weight: NonNegFloat | None = None  # None = the backend's weight


class Model(_Section, frozen=True):
    name: Annotated[str, Meta(min_length=1, max_length=256)]
    backends: tuple[ModelRoute, ...]
    strategy: Literal["weighted", "least_loaded"] = "weighted"
    input_price_per_1k: NonNegFloat = 0.0
    output_price_per_1k: NonNegFloat = 0.0


LimitName = Literal["rpm", "tpm", "max_concurrent", "monthly_budget_usd"]


class Org(_Section, frozen=True):
    id: Identifier
    disabled: bool = False
    rpm: NonNegInt = 0  # requests per minute; 0 = unlimited
    tpm: NonNegInt = 0  # tokens per minute (prompt + completion)
    max_concurrent: NonNegInt = 0  # requests in flight
    monthly_budget_usd: NonNegFloat = 0.0  # 0 = no budget
    shadow: tuple[LimitName, ...] = ()  # limits evaluated and logged but not enforced
    models: tuple[str, ...] = ()  # () = every model


class ApiKey(_Section, frozen=True):
    id: Identifier
    org: Identifier
    sha256: Sha256Hex
    disabled: bool = False
    rpm: NonNegInt = 0
    tpm: NonNegInt = 0
    max_concurrent: NonNegInt = 0
    shadow: tuple[Literal["rpm", "tpm", "max_concurrent"], ...] = ()
    models: tuple[str, ...] = ()  # () = every model the org may use


class LimitSettings(_Section, frozen=True):
    """How limits are counted and what happens when the shared store is down."""

    default_max_tokens: Annotated[int, Meta(ge=1)] = 1024  # estimate when max_tokens is absent
    redis_timeout_s: Annotated[float, Meta(gt=0, le=5)] = 0.05
    # Replicas sharing the limits: while Redis is down (failure mode "open") each replica
    # admits limit / expected_replicas on its own, so together they stay near the limit.
    expected_replicas: Annotated[int, Meta(ge=1)] = 1
    concurrency_lease_s: PositiveFloat = 60.0


class BudgetSettings(_Section, frozen=True):
    """An optional external budget authority; without it budgets come from [[orgs]]."""

    service_url: str = ""  # GET {service_url}/v1/budgets/{org}
    cache_ttl_s: PositiveFloat = 30.0
    timeout_s: PositiveFloat = 1.0


class Settings(_Section, frozen=True):
    server: ServerSettings = ServerSettings()
    state: StateSettings = StateSettings()
    admin: AdminSettings = AdminSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    routing: RoutingSettings = RoutingSettings()
    health: HealthSettings = HealthSettings()
    config_service: ConfigServiceSettings = ConfigServiceSettings()
    limits: LimitSettings = LimitSettings()
    budget: BudgetSettings = BudgetSettings()
    usage: UsageSettings = UsageSettings()
    backends: tuple[Backend, ...] = ()
    models: tuple[Model, ...] = ()
    orgs: tuple[Org, ...] = ()
    keys: tuple[ApiKey, ...] = ()


Problem = tuple[tuple[str | int, ...], str]
"""A key path inside the document and what is wrong there."""


def semantic_problems(settings: Settings) -> list[Problem]:
    """Cross-references and values a type cannot express, one problem per finding."""
    problems: list[Problem] = []
    problems += _address_problems(settings.server)
    problems += _duplicates("backends", "id", [b.id for b in settings.backends])
    problems += _duplicates("models", "name", [m.name for m in settings.models])
    problems += _duplicates("orgs", "id", [o.id for o in settings.orgs])
    problems += _duplicates("keys", "id", [k.id for k in settings.keys])
    problems += _duplicates("keys", "sha256", [k.sha256 for k in settings.keys])
    problems += _duplicates("admin.tokens", "id", [t.id for t in settings.admin.tokens])
    problems += _backend_problems(settings)
    problems += _reference_problems(settings)
    problems += _workers_problems(settings)
    otlp = settings.telemetry.otlp_endpoint
    if otlp and not otlp.startswith(("http://", "https://")):
        problems.append((("telemetry", "otlp_endpoint"), "must start with http(s):// (OTLP/HTTP)"))
    return problems


def _workers_problems(settings: Settings) -> list[Problem]:
    """Workers are separate processes: limits and budgets they enforce must live in Redis,
    or each worker would admit the whole limit on its own."""
    if settings.server.workers == 1 or settings.state.redis_configured:
        return []
    limited = [f"org {o.id!r}" for o in settings.orgs if o.rpm or o.tpm or o.max_concurrent]
    limited += [f"org {o.id!r}" for o in settings.orgs if o.monthly_budget_usd > 0]
    limited += [f"key {k.id!r}" for k in settings.keys if k.rpm or k.tpm or k.max_concurrent]
    if settings.budget.service_url:
        limited.append("[budget] service_url")
    if not limited:
        return []
    return [
        (
            ("server", "workers"),
            "more than 1 worker needs [state] redis_url (or redis_endpoints) so that the "
            f"workers share limits and budgets ({', '.join(dict.fromkeys(limited))} has some);"
            " set it, or workers = 1",
        )
    ]


def parse_listen(value: str) -> tuple[str, int]:
    """'host:port' (IPv6 as '[::1]:8080') -> (host, port); ValueError when malformed."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return host.strip("[]"), port


def _config_service_problems(settings: Settings) -> list[Problem]:
    problems: list[Problem] = []
    cs = settings.config_service
    for i, endpoint in enumerate(cs.etcd_endpoints):
        if not endpoint.startswith(("http://", "https://")):
            problems.append((("config_service", "etcd_endpoints", i), "must start with http(s)://"))
    if bool(cs.cert_file) != bool(cs.key_file):
        problems.append((("config_service", "cert_file"), "cert_file and key_file go together"))
    if bool(cs.username) != (cs.password_env is not None):
        problems.append((("config_service", "username"), "username and password_env go together"))
    return problems


def _backend_problems(settings: Settings) -> list[Problem]:
    problems: list[Problem] = _config_service_problems(settings)
    problems += redis_problems(settings.state)
    if settings.usage.sink == "kafka" and not settings.usage.kafka_bootstrap:
        problems.append((("usage", "kafka_bootstrap"), 'required when sink = "kafka"'))
    problems += kafka_security_problems(settings.usage)
    service = settings.budget.service_url
    if service and not service.startswith(("http://", "https://")):
        problems.append((("budget", "service_url"), "must start with http:// or https://"))
    for i, backend in enumerate(settings.backends):
        if not backend.url.startswith(("http://", "https://")):
            problems.append((("backends", i, "url"), "must start with http:// or https://"))
        if not backend.health_path.startswith("/"):
            problems.append((("backends", i, "health_path"), "must start with '/'"))
    return problems


def _reference_problems(settings: Settings) -> list[Problem]:
    problems: list[Problem] = []
    backend_ids = {b.id for b in settings.backends}
    model_names = {m.name for m in settings.models}
    for i, model in enumerate(settings.models):
        if not model.backends:
            problems.append((("models", i, "backends"), "a model needs at least one backend"))
        for j, route in enumerate(model.backends):
            if route.backend not in backend_ids:
                where = ("models", i, "backends", j, "backend")
                problems.append((where, f"unknown backend {route.backend!r}"))
    org_ids = {o.id for o in settings.orgs}
    for i, org in enumerate(settings.orgs):
        problems += _unknown_models(("orgs", i, "models"), org.models, model_names)
    for i, key in enumerate(settings.keys):
        if key.org not in org_ids:
            problems.append((("keys", i, "org"), f"unknown org {key.org!r}"))
        problems += _unknown_models(("keys", i, "models"), key.models, model_names)
    return problems


def _address_problems(server: ServerSettings) -> list[Problem]:
    problems: list[Problem] = []
    off = {"listen": None, "metrics_listen": "", "admin_listen": ADMIN_ON_PUBLIC}
    for name, off_value in off.items():
        value = getattr(server, name)
        if value == off_value:
            continue
        try:
            parse_listen(value)
        except ValueError as exc:
            why = str(exc)
            if name == "admin_listen":
                why = why.replace("HOST:PORT", 'HOST:PORT or "public"')
            problems.append((("server", name), why))
    return problems or admin_listen_problems(server)


def admin_listen_problems(server: ServerSettings) -> list[Problem]:
    """The admin listener is told apart from the others by its port: a fixed one of its own."""
    if server.admin_listen == ADMIN_ON_PUBLIC:
        return []
    _, port = parse_listen(server.admin_listen)
    why = ""
    if port == 0:
        why = "needs a fixed port (requests are told apart by the port they came in on)"
    for name in ("listen", "metrics_listen"):
        value = getattr(server, name)
        if value and parse_listen(value)[1] == port:
            why = f'its port must differ from {name}\'s ({value}), or set "public"'
    return [(("server", "admin_listen"), why)] if why else []


def _duplicates(section: str, field: str, values: list[str]) -> list[Problem]:
    seen: set[str] = set()
    problems: list[Problem] = []
    path = tuple(section.split("."))
    for i, value in enumerate(values):
        if value in seen:
            problems.append(((*path, i, field), f"duplicate {field} {value!r}"))
        seen.add(value)
    return problems


def _unknown_models(
    path: tuple[str | int, ...], names: tuple[str, ...], known: set[str]
) -> list[Problem]:
    return [((*path, j), f"unknown model {n!r}") for j, n in enumerate(names) if n not in known]


def to_builtins(settings: Settings) -> object:
    """Plain data (for `config show` and the demo), the inverse of loading."""
    return msgspec.to_builtins(settings)
