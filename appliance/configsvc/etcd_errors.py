"""The errors the etcd adapter raises; nothing from aiohttp or ssl leaves the adapter.

Messages name the endpoint and etcd's own reason, never a password or an auth token.
"""

from __future__ import annotations


class EtcdError(Exception):
    """etcd refused or failed a request (the base of every etcd adapter error)."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered: refused, timed out, 5xx, a member without a leader, or a broken
    watch stream. Retrying later (or re-reading and re-watching) is the remedy."""


class EtcdAuthError(EtcdError):
    """etcd did not accept who we are (user, password, permissions, client certificate) or we
    did not accept its certificate. Retrying does not help until the configuration changes."""


class WatchCompacted(EtcdError):
    """The watch's start revision was compacted: re-read the snapshot, then watch again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(
            f"etcd compacted its history up to revision {compact_revision}; "
            "re-read the snapshot and watch from its revision"
        )
        self.compact_revision = compact_revision
