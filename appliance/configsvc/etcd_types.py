"""Values the etcd adapter returns: plain, frozen, free of wire details."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    version: int
    lease: int  # 0 = no lease


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every key under a prefix as it was at `revision` (one consistent read)."""

    revision: int
    items: Mapping[str, bytes]


@dataclass(frozen=True, slots=True)
class TxnResult:
    """`succeeded` False means the compare failed and nothing was written; `revision` is then
    the store's current revision, else the revision of the write."""

    succeeded: bool
    revision: int


@dataclass(frozen=True, slots=True)
class EtcdStatus:
    endpoint: str
    version: str
    revision: int
    leader: int  # member id; 0 = this member knows no leader
    member_id: int
    db_size: int


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    key: str
    value: bytes  # b"" for a delete
    mod_revision: int


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """One watch response. All events of one revision (one txn) arrive in the same batch.

    Every change up to and including `revision` has been delivered: resume from revision + 1.
    An empty batch is a progress notification that only moves `revision` forward.
    """

    revision: int
    events: tuple[WatchEvent, ...]
