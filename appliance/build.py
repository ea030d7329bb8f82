"""Build metadata: version, commit and build time, baked into a binary when it is built."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

# The PyInstaller build generates this top-level module and bundles it; a source tree has none,
# so it can never go stale in a checkout.
STAMP_MODULE = "_routerctl_build_stamp"


@dataclass(frozen=True, slots=True)
class BuildInfo:
    version: str
    commit: str
    build_time: str

    def describe(self) -> str:
        """The one line `routerctl version` prints."""
        return f"routerctl {self.version} (commit {self.commit}, built {self.build_time or '-'})"

    def as_dict(self) -> dict[str, str]:
        return {"version": self.version, "commit": self.commit, "build_time": self.build_time}


def stamp_source(info: BuildInfo) -> str:
    """The text of the stamp module a build bakes into the binary."""
    return (
        '"""Generated at build time by packaging/pyinstaller/routerctl.spec; do not edit."""\n\n'
        f"VERSION = {info.version!r}\n"
        f"COMMIT = {info.commit!r}\n"
        f"BUILD_TIME = {info.build_time!r}\n"
    )


def _installed_version() -> str:
    from importlib import metadata  # noqa: PLC0415  (only a source install needs it)

    try:
        return metadata.version("routerctl")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def load_build_info() -> BuildInfo:
    """The baked stamp in a binary; else the installed version and ROUTERCTL_* env, or "dev"."""
    try:
        stamp = importlib.import_module(STAMP_MODULE)
    except ImportError:
        return BuildInfo(
            version=_installed_version(),
            commit=os.environ.get("ROUTERCTL_COMMIT", "dev"),
            build_time=os.environ.get("ROUTERCTL_BUILD_TIME", ""),
        )
    return BuildInfo(
        version=str(stamp.VERSION), commit=str(stamp.COMMIT), build_time=str(stamp.BUILD_TIME)
    )


BUILD = load_build_info()
