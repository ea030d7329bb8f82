"""Composition root, usage part: outbox, sinks, publisher and the recorder the edge calls.

Only `appliance.app` imports this module.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from appliance.audit.events import AuditEvent, encode_event
from appliance.readiness import ProbeFailed
from appliance.runtime import Runtime
from appliance.settings import Settings
from appliance.settings.loader import ConfigError
from appliance.sqlite_support import StoreError
from appliance.telemetry.logging import get_logger
from appliance.telemetry.metrics import Metrics
from appliance.telemetry.usage_metrics import UsageMetrics
from appliance.usage.buffer_watch import BufferWatch
from appliance.usage.file_sink import FileSink, NoneSink
from appliance.usage.free_space import FreeSpace
from appliance.usage.kafka_security import KafkaSecurity, KafkaSecurityError
from appliance.usage.kafka_sink import KafkaSink
from appliance.usage.ports import Topic, UsageSink
from appliance.usage.publisher import Publisher
from appliance.usage.recorder import UsageRecorder
from appliance.usage.sqlite_outbox import SqliteOutbox
from appliance.usage.state_lock import hold_shared

_log = get_logger("routerctl.app")
_MB = 1024 * 1024
_PRUNE_EVERY_S = 3600.0
_PUBLISH_STOP_S = 12.0


@dataclass
class UsageParts:
    """The outbox, its publisher and the recorder the edge calls for every request."""

    outbox: SqliteOutbox
    publisher: Publisher
    recorder: UsageRecorder
    watch: BufferWatch
    free_space: FreeSpace
    state_dir: Path
    audit_to_outbox: bool
    retention_s: float
    kafka: KafkaSink | None = None
    # One publisher per outbox: with several workers only the first publishes (and prunes).
    publishes: bool = True
    lock: ExitStack = field(default_factory=ExitStack)
    pruner: asyncio.Task[None] | None = None

    async def open(self) -> None:
        # A shared lock: several workers may serve one state dir; `buffer replay` needs it
        # exclusive, so it refuses to run against a live router.
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.lock.enter_context(hold_shared(self.state_dir))
        await self.outbox.open()
        await asyncio.to_thread(self.free_space.measure)  # refuse from the first request on
        if self.publishes:
            self.publisher.start()
            self.pruner = asyncio.create_task(self._prune_lookups())
        self.watch.start()

    async def close(self) -> None:
        if self.pruner is not None:
            self.pruner.cancel()
            await asyncio.gather(self.pruner, return_exceptions=True)
        await self.watch.stop()
        # Long enough for a batch in flight to Kafka; whatever is left stays in the outbox.
        await self.publisher.stop(timeout_s=_PUBLISH_STOP_S)
        if self.recorder.held:  # a last chance for records the full disk kept in memory
            await self.recorder.flush_held()
            self.recorder.drop_held()
        await self.outbox.close()
        self.lock.close()

    async def _prune_lookups(self) -> None:
        while True:
            try:
                await self.outbox.prune_log(time.time(), self.retention_s)
            except StoreError as exc:
                _log.warning("usage_lookup_prune_failed", error=str(exc))
            await asyncio.sleep(_PRUNE_EVERY_S)

    async def check_buffer(self) -> None:
        """Readiness: unhealthy while new requests are refused (full buffer, low disk, or
        records held in memory), so load balancers drain this replica meanwhile."""
        if (reason := self.recorder.refusal()) is not None:
            raise ProbeFailed(reason)

    async def forward_audit(self, event: AuditEvent) -> None:
        """Audit events go to the Kafka audit topic through the outbox, like usage."""
        if self.audit_to_outbox:
            await self.recorder.append("audit", event.org or "", event.id, encode_event(event))


def build_usage(
    settings: Settings, state_dir: Path, metrics: Metrics, runtime: Runtime, kafka_password: str
) -> UsageParts:
    u = settings.usage
    holder: list[UsageRecorder] = []
    observer = UsageMetrics(
        metrics.registry, on_buffer=lambda n: setattr(holder[0], "buffered_bytes", n)
    )
    free_space = FreeSpace(state_dir, int(settings.state.min_free_mb * _MB))
    outbox = SqliteOutbox(
        state_dir / "outbox.sqlite",
        int(u.max_buffer_mb * _MB),
        u.on_full,
        # No extra wait: appends arriving while a commit runs already share the next one.
        batch_window_s=0,
        on_drop=observer.dropped,
        after_commit=free_space.measure_if_stale,  # on the outbox's thread, <= 10 statvfs/s
    )
    sinks: dict[Topic, UsageSink]
    kafka: KafkaSink | None = None
    if u.sink == "kafka":
        kafka = KafkaSink(
            u.kafka_bootstrap,
            {"usage": u.kafka_topic, "audit": u.kafka_audit_topic},
            acks=u.kafka_acks,
            compression=None if u.kafka_compression == "none" else u.kafka_compression,
            security=_kafka_security(settings, kafka_password),
        )
        sinks = {"usage": kafka, "audit": kafka}
    elif u.sink == "file":
        path = Path(u.file_path) if u.file_path else state_dir / "usage.jsonl"
        sinks = {
            "usage": FileSink(path, int(u.file_max_mb * _MB), u.file_keep),
            "audit": NoneSink(),
        }
    else:
        sinks = {"usage": NoneSink(), "audit": NoneSink()}
    publisher = Publisher(outbox, sinks, u.batch_max, observer=observer)
    recorder = UsageRecorder(
        outbox=outbox,
        prices=lambda model: _prices(runtime, model),
        notify=publisher.notify,
        observer=observer,
        max_bytes=int(u.max_buffer_mb * _MB),
        reject_when_full=u.on_full == "reject",
        free_space=free_space,
    )
    holder.append(recorder)
    return UsageParts(
        outbox,
        publisher,
        recorder,
        BufferWatch(outbox, free_space, recorder, observer),
        free_space,
        state_dir,
        audit_to_outbox=u.sink == "kafka",
        retention_s=u.lookup_retention_days * 86400,
        kafka=kafka,
    )


def _kafka_security(settings: Settings, password: str) -> KafkaSecurity:
    try:
        return KafkaSecurity.from_settings(settings.usage, password)
    except KafkaSecurityError as exc:  # the files changed since the config was loaded
        raise ConfigError([str(exc)]) from None


def _prices(runtime: Runtime, model: str | None) -> tuple[float, float]:
    route = runtime.routes.get(model) if model else None
    return route.prices if route is not None else (0.0, 0.0)
