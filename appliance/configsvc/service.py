"""Where the live config comes from (the file, and etcd when configured) and how it changes:
file reloads (SIGHUP, the admin API), the etcd watch, and readiness of the config service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import msgspec

from appliance.configsvc.etcd_source import ApplyObserver, EtcdConfigSource
from appliance.configsvc.live import ApplyError, LiveConfig, keep_static
from appliance.readiness import ProbeFailed
from appliance.settings.loader import ConfigError, LoadedConfig
from appliance.telemetry.logging import get_logger

_log = get_logger("routerctl.config")


class ReloadRefused(Exception):
    """The file cannot be reloaded (no file, unreadable, invalid): the old config stays."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ReloadResult:
    source: str
    revision: int
    restart_needed: list[str]  # static sections the file changed: they wait for a restart


class ConfigService:
    def __init__(
        self,
        *,
        path: str | None,
        live: LiveConfig,
        load: Callable[[str], LoadedConfig],
        observer: ApplyObserver,
        etcd: EtcdConfigSource | None,
        start_timeout_s: float,
        server_overrides: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._server_overrides = dict(server_overrides or {})
        self._path = path
        self._live = live
        self._load = load
        self._observer = observer
        self.etcd = etcd
        self._start_timeout_s = start_timeout_s
        self._clock = clock
        self._lock = asyncio.Lock()  # one reload at a time

    async def open(self) -> None:
        """Apply the config's live source: the file, or etcd (or its cache) then the watch."""
        if self.etcd is None:
            self._observer.applied(0, "file", self._clock())
            return
        dynamic = [k for k in ("backends", "models", "orgs", "keys") if getattr(self.etcd.base, k)]
        if dynamic:
            _log.warning(
                "config_file_sections_ignored",
                sections=dynamic,
                detail="with [config_service] set these come from etcd; see `config push`",
            )
        await self.etcd.start(self._start_timeout_s)

    async def close(self) -> None:
        if self.etcd is not None:
            await self.etcd.stop()

    async def reload_file(self) -> ReloadResult:
        """Re-read the config file and apply what can change live; ReloadRefused if invalid."""
        if self._path is None:
            raise ReloadRefused(["this router was started without a config file (--demo)"])
        async with self._lock:
            try:
                loaded = await asyncio.to_thread(self._load, self._path)
            except ConfigError as exc:
                self._observer.rejected()
                raise ReloadRefused(exc.problems) from None
            settings = loaded.settings
            if self._server_overrides:  # what --listen set at start still holds
                server = msgspec.structs.replace(settings.server, **self._server_overrides)
                settings = msgspec.structs.replace(settings, server=server)
            new, restart = keep_static(settings, self._live.settings)
            try:
                if self.etcd is not None:
                    self.etcd.base = new
                    await self.etcd.reapply()
                    source, revision = "etcd", self.etcd.applied_revision
                else:
                    self._live.apply(new)
                    source, revision = "file", 0
                    self._observer.applied(0, "file", self._clock())
            except ApplyError as exc:
                self._observer.rejected()
                raise ReloadRefused([str(exc)]) from None
        if restart:
            _log.warning("config_reload_needs_restart", sections=restart)
        _log.info("config_reloaded", path=self._path, restart_needed=restart)
        return ReloadResult(source, revision, restart)

    async def probe(self) -> None:
        """Readiness: healthy while the etcd watch is live."""
        etcd = self.etcd
        if etcd is not None and not etcd.connected:
            raise ProbeFailed(
                "etcd unreachable; serving the last-known-good config "
                f"(revision {etcd.applied_revision})"
            )
