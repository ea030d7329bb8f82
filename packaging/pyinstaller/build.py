"""Build `dist/routerctl` from routerctl.spec; `nox -s binary` and the e2e fixture both call it.

Usage: python packaging/pyinstaller/build.py [--if-stale]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "packaging" / "pyinstaller" / "routerctl.spec"
BINARY = ROOT / "dist" / "routerctl"
# What goes into the binary: a change to any of these makes an existing binary stale.
SOURCES = (ROOT / "appliance", ROOT / "routerctl", SPEC, ROOT / "pyproject.toml")


def newest_source_mtime() -> float:
    """The latest modification time of anything the binary is built from."""
    times = [0.0]
    for source in SOURCES:
        files = source.rglob("*") if source.is_dir() else [source]
        times.extend(f.stat().st_mtime for f in files if f.is_file() and f.suffix != ".pyc")
    return max(times)


def is_stale(binary: Path = BINARY) -> bool:
    """True when the binary is missing or older than a source it is built from."""
    return not binary.exists() or binary.stat().st_mtime < newest_source_mtime()


def build() -> Path:
    """Run PyInstaller with the current interpreter; returns the executable's path."""
    try:
        import PyInstaller  # noqa: F401, PLC0415
    except ImportError:
        raise SystemExit(
            f"PyInstaller is not installed in {sys.executable}: pip install 'pyinstaller>=6.10'"
        ) from None
    started = time.monotonic()
    subprocess.run(  # noqa: S603  (fixed argv: this interpreter, PyInstaller, our spec)
        [
            sys.executable,
            "-m",
            "PyInstaller",
            str(SPEC),
            "--noconfirm",
            "--clean",
            "--log-level",
            "WARN",
            "--distpath",
            str(BINARY.parent),
            "--workpath",
            str(ROOT / "build" / "pyinstaller"),
        ],
        cwd=ROOT,
        check=True,
    )
    size_mb = BINARY.stat().st_size / 1e6
    print(f"built {BINARY} ({size_mb:.1f} MB) in {time.monotonic() - started:.0f}s")
    return BINARY


if __name__ == "__main__":
    if "--if-stale" in sys.argv[1:] and not is_stale():
        print(f"{BINARY} is up to date")
    else:
        build()
