"""The `routerctl` command: the table of command groups and the entry point.

A command's module is imported only when that command runs (or help lists it), and `version`
answers before typer is even imported, so probes and scripts start fast.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import typer

# name -> "module:attribute". A typer.Typer attribute becomes a command group, a function one
# command. Help lists them in this order.
COMMANDS: Final[Mapping[str, str]] = {
    "serve": "routerctl.commands.serve:serve",
    "mock-backend": "routerctl.commands.mock_backend:mock_backend",
    "version": "routerctl.commands.version:version",
    "config": "routerctl.commands.config_cmd:app",
    "keys": "routerctl.commands.keys:app",
    "backend": "routerctl.commands.backend:app",
    "override": "routerctl.commands.override:app",
    "audit": "routerctl.commands.audit:app",
    "buffer": "routerctl.commands.buffer:app",
    "doctor": "routerctl.commands.doctor:doctor",
    "top": "routerctl.commands.top:top",
    "dev": "routerctl.commands.dev:app",
}


def run() -> None:
    """Console-script entry point."""
    argv = sys.argv[1:]
    if argv in (["version"], ["version", "--json"], ["--version"]):
        # Building the CLI (typer, pydantic) would triple this start-up; the output is the
        # version command's, byte for byte (tests/packaging checks it).
        print_version(as_json=argv == ["version", "--json"])
        return
    from routerctl.cli import app  # noqa: PLC0415

    app()


def print_version(*, as_json: bool) -> None:
    from appliance.build import BUILD  # noqa: PLC0415

    if as_json:
        import msgspec  # noqa: PLC0415

        print(msgspec.json.format(msgspec.json.encode(BUILD.as_dict()), indent=2).decode())
    else:
        print(BUILD.describe())


def __getattr__(name: str) -> typer.Typer:
    # `from routerctl.main import app` (tests, embedding) still works; it builds the typer app.
    if name == "app":
        from routerctl.cli import app  # noqa: PLC0415

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
