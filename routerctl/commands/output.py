"""How commands speak: tables or JSON on stdout, one readable error line on stderr."""

from __future__ import annotations

from typing import NoReturn

import msgspec
import typer


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"routerctl: error: {message}", err=True)
    raise typer.Exit(code)


def fail_lines(lines: list[str], code: int = 1) -> NoReturn:
    for line in lines:
        typer.echo(line, err=True)
    raise typer.Exit(code)


def print_json(value: object) -> None:
    typer.echo(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())
