"""A real small filesystem for full-disk tests: a tmpfs of a given size, and a filler file.

Mounting needs root (or CAP_SYS_ADMIN), which CI and the development machines have; the
router then sees the same ENOSPC and "database or disk is full" a full production disk gives.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_CHUNK = 64 * 1024


@contextmanager
def tmpfs(path: Path, size_bytes: int) -> Iterator[Path]:
    """Mount a tmpfs of `size_bytes` at `path` (created if missing) for the block."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        raise RuntimeError(
            f"cannot mount a tmpfs at {path} (full-disk tests need root, as in CI):"
            f" {mounted.stderr.strip()}"
        )
    try:
        yield path
    finally:
        # Lazy: a file a failed test left open must not make the unmount fail the teardown.
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def fill(directory: Path, leave_bytes: int = 0, name: str = "filler") -> Path:
    """Write a file in `directory` until at most `leave_bytes` are free (0: until ENOSPC).

    Delete the returned file to give the space back.
    """
    filler = directory / name
    with filler.open("ab", buffering=0) as file:
        for _ in range(1 << 20):  # bounded: 64 GiB of chunks
            want = free_bytes(directory) - leave_bytes
            if want <= 0:
                break
            try:
                file.write(b"\0" * min(_CHUNK, want))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return filler
