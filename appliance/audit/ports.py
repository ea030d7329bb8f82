"""The audit store's interface: SQLite in the state dir now; #5 adds Kafka and lookups."""

from __future__ import annotations

from typing import Protocol

from appliance.audit.events import AuditEvent


class AuditStore(Protocol):
    async def append(self, event: AuditEvent) -> None:
        """Durably record one event (committed before returning)."""
        ...

    async def query(
        self,
        *,
        kind: str | None = None,
        org: str | None = None,
        request_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        """Events matching every given filter, newest first."""
        ...
