"""Where `routerctl version` takes its commit from when no binary stamp is baked in."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from appliance import build

ROOT = Path(__file__).resolve().parents[2]


def test_a_checkout_reports_its_head(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from a git checkout (this one), the commit is HEAD's, not "dev"."""
    monkeypatch.delenv("ROUTERCTL_COMMIT", raising=False)
    monkeypatch.setattr(build, "_installed_commit", lambda: None)
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert build.load_build_info().commit == head


def test_the_environment_wins_then_pips_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """ROUTERCTL_COMMIT (set by packagers) beats pip's VCS record, which beats the checkout;
    with none of them the commit is "dev"."""
    monkeypatch.setattr(build, "_installed_commit", lambda: "abc123abc123")
    monkeypatch.setenv("ROUTERCTL_COMMIT", "f00d")
    assert build.load_build_info().commit == "f00d"
    monkeypatch.delenv("ROUTERCTL_COMMIT")
    assert build.load_build_info().commit == "abc123abc123"
    monkeypatch.setattr(build, "_installed_commit", lambda: None)
    monkeypatch.setattr(build, "_checkout_commit", lambda: None)
    assert build.load_build_info().commit == "dev"
