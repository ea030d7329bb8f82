"""Config service metrics: which config is live, where it came from, applies and rejections."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

# "cache" means serving the last-known-good snapshot because etcd cannot be reached: the
# alert on etcd connectivity reads exactly that.
SOURCES = ("file", "etcd", "cache")


class ConfigMetrics:
    """Driven by whatever applies configuration: the file at start, later the etcd watch."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._revision = Gauge(
            "router_config_revision",
            "Revision of the applied configuration (etcd revision; 0 for the file).",
            registry=registry,
        )
        applies = Counter(
            "router_config_applies_total",
            "Configuration snapshots applied, or rejected as invalid (the previous one kept).",
            ["result"],
            registry=registry,
        )
        self._applied = applies.labels("applied")
        self._rejected = applies.labels("rejected")
        self._last_apply = Gauge(
            "router_config_last_apply_timestamp_seconds",
            "Unix time the live configuration was applied.",
            registry=registry,
        )
        source = Gauge(
            "router_config_source",
            "1 for where the live configuration comes from (file, etcd, or the etcd cache).",
            ["source"],
            registry=registry,
        )
        self._sources = {name: source.labels(name) for name in SOURCES}

    def applied(self, revision: int, source: str, at: float) -> None:
        """A snapshot from `source` at `revision` is live since `at` (unix seconds)."""
        self.source(source)
        self._revision.set(revision)
        self._last_apply.set(at)
        self._applied.inc()

    def rejected(self) -> None:
        """An invalid snapshot was refused; the live one stays."""
        self._rejected.inc()

    def source(self, name: str) -> None:
        """Where the live configuration comes from now: one of SOURCES."""
        if name not in self._sources:
            raise ValueError(f"unknown config source {name!r}; expected one of {SOURCES}")
        for source, gauge in self._sources.items():
            gauge.set(1 if source == name else 0)
