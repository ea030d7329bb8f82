"""Audit event values (pure): one record per operator change or enforcement decision."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec

# Every kind the router writes; `audit lookup --kind` accepts these only.
KINDS = (
    "backend.degrade",
    "backend.drain",
    "backend.restore",
    "override.pin",
    "override.clear",
    "limit.deny",
    "limit.shadow_deny",
    "config.reject",
)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audited fact. `kind` is one of KINDS: "backend.drain", "limit.deny", ..."""

    kind: str
    time: float  # unix seconds
    actor: str | None = None  # admin token id, or None for the router itself
    org: str | None = None
    key_id: str | None = None
    request_id: str | None = None
    subject: str | None = None  # what it is about: a backend id, an override id, a limit
    reason: str | None = None
    before: Any = None  # JSON-able state before a change
    after: Any = None  # JSON-able state after it
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


def encode_event(event: AuditEvent) -> bytes:
    """The event as JSON (for the Kafka audit topic)."""
    return msgspec.json.encode(event)
