"""Build metadata: version, commit and build time, baked into a binary when it is built."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

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


def _installed_commit() -> str | None:
    """The commit pip recorded for a VCS install (PEP 610 `direct_url.json`), if any."""
    from importlib import metadata  # noqa: PLC0415

    try:
        raw = metadata.distribution("routerctl").read_text("direct_url.json")
        commit = json.loads(raw or "{}").get("vcs_info", {}).get("commit_id")
    except (metadata.PackageNotFoundError, ValueError, AttributeError):
        return None
    return str(commit)[:12] if commit else None


def _checkout_commit() -> str | None:
    """HEAD of the git checkout this code runs from (a source tree, an editable install)."""
    root = Path(__file__).resolve().parents[1]
    git = shutil.which("git")
    if git is None or not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(  # noqa: S603 - fixed arguments, git from PATH
            [git, "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=2,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _commit() -> str:
    return os.environ.get("ROUTERCTL_COMMIT") or _installed_commit() or _checkout_commit() or "dev"


def load_build_info() -> BuildInfo:
    """The baked stamp in a binary; else the installed version and the commit from
    ROUTERCTL_COMMIT, pip's record of a VCS install, or the git checkout; else "dev"."""
    try:
        stamp = importlib.import_module(STAMP_MODULE)
    except ImportError:
        return BuildInfo(
            version=_installed_version(),
            commit=_commit(),
            build_time=os.environ.get("ROUTERCTL_BUILD_TIME", ""),
        )
    return BuildInfo(
        version=str(stamp.VERSION), commit=str(stamp.COMMIT), build_time=str(stamp.BUILD_TIME)
    )


BUILD = load_build_info()
