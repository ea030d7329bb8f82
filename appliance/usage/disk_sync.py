"""Syncing a file or directory by path (the usage sinks' and the outbox's durability steps)."""

from __future__ import annotations

import os
from pathlib import Path


def sync_path(path: Path, *, data_only: bool = False) -> None:
    """fsync `path` (a file or a directory); `data_only`: fdatasync, without the metadata a
    read does not need (a file's times)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if data_only:
            os.fdatasync(fd)
        else:
            os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["sync_path"]
