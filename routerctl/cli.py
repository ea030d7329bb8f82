"""The typer app behind `routerctl`: the groups of main.COMMANDS, each imported on first use."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Annotated, Any

import typer
from typer.core import TyperGroup
from typer.main import get_group

from routerctl.main import COMMANDS


def load_command(name: str, target: str) -> Any:  # typer's vendored click.Command
    """Import one entry of COMMANDS and build its click command as add_typer/command would."""
    module_name, _, attribute = target.partition(":")
    obj = getattr(importlib.import_module(module_name), attribute)
    holder = typer.Typer(rich_markup_mode=None)
    if isinstance(obj, typer.Typer):
        holder.add_typer(obj, name=name, cls=WholeHelpGroup)
    else:
        holder.command(name)(obj)
    # get_group always builds a group, so a one-command sub-app stays a group of its own.
    return get_group(holder).commands[name]


class LazyCommands(MutableMapping[str, Any]):
    """Command names known up front (help order, typo suggestions); modules loaded on access."""

    def __init__(self, targets: Mapping[str, str], loaded: Mapping[str, Any]) -> None:
        self._targets = {name: t for name, t in targets.items() if name not in loaded}
        self._loaded: dict[str, Any] = dict(loaded)

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded:
            self._loaded[name] = load_command(name, self._targets[name])
        return self._loaded[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        self._targets.pop(name, None)
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        yield from self._targets
        yield from (name for name in self._loaded if name not in self._targets)

    def __len__(self) -> int:
        return len(self._targets.keys() | self._loaded.keys())


class WholeHelpGroup(TyperGroup):
    """A group whose command list shows each command's first sentence whole."""

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """Each command's first sentence whole, wrapped, never cut with "..." as click does
        past ~45 characters: the list is how a newcomer finds the command they need."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=1_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class LazyGroup(WholeHelpGroup):
    """The root group: main.COMMANDS plus anything registered on `app` directly."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = LazyCommands(COMMANDS, self.commands)


app = typer.Typer(
    rich_markup_mode=None,
    name="routerctl",
    help="Inference API router appliance: serve, steer and inspect it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=LazyGroup,
)


def _print_version(value: bool) -> None:
    if value:
        from routerctl.main import print_version  # noqa: PLC0415

        print_version(as_json=False)
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print routerctl's version, commit and build time, and exit.",
        ),
    ] = False,
) -> None:
    # A callback makes typer build a group although no command is registered on app itself.
    pass
