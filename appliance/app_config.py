"""Composition root, config part: the overrides store and, with etcd, the config service.

Only `appliance.app` imports this module.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.audit.events import AuditEvent
from appliance.configsvc.connect import etcd_client_from
from appliance.configsvc.etcd_client import EtcdClient
from appliance.configsvc.etcd_overrides import EtcdOverrideStore
from appliance.configsvc.etcd_source import ApplyObserver, EtcdConfigSource
from appliance.configsvc.live import LiveConfig
from appliance.configsvc.service import ConfigService
from appliance.configsvc.sqlite_cache import SqliteConfigCache
from appliance.routing.sqlite_override_store import SqliteOverrideStore
from appliance.settings import Settings
from appliance.settings.loader import LoadedConfig, load_file


@dataclass
class ConfigStore:
    """Where overrides live: SQLite in the state dir, or etcd (shared by every replica)."""

    overrides: SqliteOverrideStore | EtcdOverrideStore
    etcd: EtcdClient | None
    cache: SqliteConfigCache | None

    async def open(self) -> None:
        if isinstance(self.overrides, SqliteOverrideStore):
            await self.overrides.open()
        if self.cache is not None:
            await self.cache.open()
        if self.etcd is not None:
            await self.etcd.open()

    async def close(self) -> None:
        if self.etcd is not None:
            await self.etcd.close()
        if self.cache is not None:
            await self.cache.close()
        if isinstance(self.overrides, SqliteOverrideStore):
            await self.overrides.close()


def build_store(settings: Settings, state_dir: Path) -> ConfigStore:
    client = etcd_client_from(settings, os.environ)
    if client is None:
        return ConfigStore(SqliteOverrideStore(state_dir / "overrides.sqlite"), None, None)
    cache = SqliteConfigCache(state_dir / "config-cache.sqlite")
    return ConfigStore(EtcdOverrideStore(client, settings.config_service.prefix), client, cache)


def build_config_service(  # noqa: PLR0917 - the composition root hands over its parts
    config: LoadedConfig,
    store: ConfigStore,
    live: LiveConfig,
    observer: ApplyObserver,
    audit: Callable[[AuditEvent], None],
    overrides_changed: Callable[[], Awaitable[None]],
) -> ConfigService:
    settings = config.settings
    etcd = None
    if store.etcd is not None and store.cache is not None:
        etcd = EtcdConfigSource(
            store.etcd,
            prefix=settings.config_service.prefix,
            base=settings,
            live=live,
            cache=store.cache,
            observer=observer,
            audit=audit,
            overrides_changed=overrides_changed,
        )
        if isinstance(store.overrides, EtcdOverrideStore):
            source = etcd
            store.overrides.last_seen = lambda: source.overrides
    path = config.source if Path(config.source).is_file() else None
    return ConfigService(
        path=path,
        live=live,
        load=load_file,
        observer=observer,
        etcd=etcd,
        start_timeout_s=settings.config_service.timeout_s,
        server_overrides=config.server_overrides,
    )
