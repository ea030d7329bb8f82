"""Audit kinds: one closed list, the one the CLI checks `--kind` against."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from appliance.audit.events import KINDS
from appliance.routing.overrides import OverrideKind
from routerctl.main import app

APPLIANCE = Path(__file__).resolve().parents[2] / "appliance"


def test_every_kind_the_router_writes_is_listed() -> None:
    """Each literal kind in the code, and each override kind's event, is one of KINDS."""
    written = set()
    for path in APPLIANCE.rglob("*.py"):
        written |= set(re.findall(r'kind="([a-z_]+\.[a-z_]+)"', path.read_text()))
        written |= set(re.findall(r'"(limit\.[a-z_]+)"', path.read_text()))
    written |= {f"backend.{k.value}" for k in OverrideKind if k is not OverrideKind.PIN}
    assert written, "the pattern found nothing: it is broken"
    assert sorted(written - set(KINDS)) == []


def test_an_unknown_kind_is_refused_with_the_list() -> None:
    """`audit lookup --kind nope` exits 2 naming every kind, before any request is sent."""
    result = CliRunner().invoke(app, ["audit", "lookup", "--kind", "nope"])
    assert result.exit_code == 2
    assert "unknown kind 'nope'" in result.output
    assert all(kind in result.output for kind in KINDS)
