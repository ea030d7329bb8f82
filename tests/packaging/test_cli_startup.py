"""Lean start-up of the CLI (routerctl/main.py, routerctl/cli.py): `version` answers before
typer is imported, and every other command imports only its own module."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from routerctl.cli import app, load_command
from routerctl.main import COMMANDS

HEAVY = ("typer", "pydantic", "rich", "quart", "hypercorn", "aiohttp", "aiokafka", "redis")


def python(code: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def loaded_after(argv: list[str], entry: str) -> list[str]:
    """The heavy top-level packages imported once `entry` has handled argv."""
    code = (
        "import sys\n"
        f"sys.argv = {['routerctl', *argv]!r}\n"
        f"{entry}\n"
        "try:\n    run()\nexcept SystemExit:\n    pass\n"
        f"print('loaded:' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("loaded:"), result.stderr
    return [m for m in last.removeprefix("loaded:").split(",") if m]


@pytest.mark.parametrize("argv", [["version"], ["version", "--json"]])
def test_fast_version_is_the_version_command_byte_for_byte(argv: list[str]) -> None:
    """The fast path prints exactly what the typer `version` command prints."""
    env = {"ROUTERCTL_COMMIT": "abc123def456", "ROUTERCTL_BUILD_TIME": "2026-01-02T03:04:05Z"}
    fast = python(f"import sys; sys.argv = {['routerctl', *argv]!r}; "
                  "from routerctl.main import run; run()", env)  # fmt: skip
    slow = python(f"from typer.testing import CliRunner; from routerctl.cli import app; "
                  f"print(CliRunner().invoke(app, {argv!r}).output, end='')", env)  # fmt: skip
    assert fast == slow
    assert "abc123def456" in fast


def test_version_imports_no_cli_framework() -> None:
    """`routerctl version` loads none of typer, pydantic, rich or the server libraries."""
    assert loaded_after(["version"], "from routerctl.main import run") == []


def test_a_light_command_does_not_load_the_server_stack() -> None:
    """`keys --help` builds only the keys group: no quart, hypercorn, aiohttp, aiokafka, redis."""
    loaded = loaded_after(["keys", "--help"], "from routerctl.main import run")
    assert "typer" in loaded  # the check sees imports at all
    assert set(loaded) & {"quart", "hypercorn", "aiohttp", "aiokafka", "redis"} == set()


def test_every_registered_command_loads_and_help_lists_them_in_order() -> None:
    """Each COMMANDS entry imports and builds; `--help` lists them all, in table order."""
    for name, target in COMMANDS.items():
        assert load_command(name, target).name == name
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    positions = [result.output.index(f" {name} ") for name in COMMANDS]
    assert positions == sorted(positions)


def test_a_typo_still_gets_a_suggestion() -> None:
    """Unknown commands are usage errors that suggest the closest registered one."""
    result = CliRunner().invoke(app, ["serv"])
    assert result.exit_code == 2
    assert "serve" in result.output
