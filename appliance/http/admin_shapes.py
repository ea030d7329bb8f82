"""The admin API's answers, as msgspec Structs: encoded by its routes, decoded by the CLI's
admin client, and the schemas of the OpenAPI document. No web framework here, so the CLI
imports them cheaply.

Enumerated values (an override's kind, a backend's health) are strings on the wire, their
values listed in the schema only: a CLI must still read a newer router that adds one.
"""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta, Struct

from appliance.routing.overrides import OverrideKind
from appliance.routing.registry import Health

OverrideKindName = Annotated[str, Meta(extra_json_schema={"enum": [k.value for k in OverrideKind]})]
HealthName = Annotated[str, Meta(extra_json_schema={"enum": [h.value for h in Health]})]


class OverrideView(Struct, frozen=True):
    """The one JSON shape of an override; times are unix seconds, as OpenAI's `created`."""

    id: str
    kind: OverrideKindName
    backend: str
    model: str | None
    factor: float
    reason: str
    actor: str
    created_at: float
    expires_at: float | None  # None: until cleared


class BackendState(Struct, frozen=True):
    id: str
    models: list[str]
    weight: float  # configured
    effective_weight: float  # configured x the override's factor
    health: HealthName
    inflight: int
    max_concurrency: int  # 0: unlimited
    ewma_latency_ms: float | None
    ejections: int
    override: OverrideView | None  # the degrade or drain in force


class BackendList(Struct, frozen=True):
    data: list[BackendState]


class OverrideList(Struct, frozen=True):
    data: list[OverrideView]


class Restored(Struct, frozen=True):
    removed: list[OverrideView]


class AuditEventView(Struct, frozen=True):
    """The one JSON shape of an audit event; `time` is unix seconds, `time_iso` the same in UTC."""

    id: str
    kind: str  # one of audit.events.KINDS
    time: float
    time_iso: str
    actor: str | None
    org: str | None
    key_id: str | None
    request_id: str | None
    subject: str | None
    reason: str | None
    before: Any  # the state before a change, as JSON
    after: Any


class AuditEvents(Struct, frozen=True):
    data: list[AuditEventView]
