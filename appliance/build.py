"""Build metadata: version from the installed package, commit and time stamped at build."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata


@dataclass(frozen=True, slots=True)
class BuildInfo:
    version: str
    commit: str
    build_time: str


def _version() -> str:
    try:
        return metadata.version("routerctl")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


# Packaging (issue 8) stamps ROUTERCTL_COMMIT / ROUTERCTL_BUILD_TIME; a source checkout says "dev".
BUILD = BuildInfo(
    version=_version(),
    commit=os.environ.get("ROUTERCTL_COMMIT", "dev"),
    build_time=os.environ.get("ROUTERCTL_BUILD_TIME", ""),
)
