"""Load a TOML file into `Settings`, reporting every problem as `file:line: key: reason`.

msgspec stops at the first error, so the document is walked field by field against the
schema first: one bad key does not hide the next. The keys found bad are then set aside and
the cross-references checked on the rest, so one run reports every problem, sorted by line.
Lines come from the TOML parser for syntax errors and from a scan of the text otherwise.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

import msgspec

from appliance.settings import Problem, Settings, semantic_problems
from appliance.settings.kafka import kafka_environment_problems, kafka_password
from appliance.settings.messages import readable, unknown_key
from appliance.settings.redis import redis_environment_problems

KeyPath = tuple[str | int, ...]


class ConfigError(Exception):
    """A configuration that must not be served; `problems` holds one line per finding."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True, slots=True)
class BackendCredentials:
    """Headers carrying a backend's secrets, resolved from the environment at start."""

    headers: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"BackendCredentials(headers=<{len(self.headers)} redacted>)"


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    settings: Settings
    credentials: Mapping[str, BackendCredentials]
    source: str
    # [server] keys set on the command line (--listen): a reload applies them again.
    server_overrides: Mapping[str, str] = field(default_factory=dict)
    # The SASL password kafka_password_env names, read at start; never printed.
    kafka_password: str = field(default="", repr=False)


def load_file(path: str | Path, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Read, validate and resolve a config file; raises ConfigError listing every problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{source}: cannot read: {exc}"]) from None
    return load_text(text, source, environ)


def load_text(
    text: str, source: str = "<config>", environ: Mapping[str, str] | None = None
) -> LoadedConfig:
    settings, problems = _checked(text, source)
    credentials: dict[str, BackendCredentials] = {}
    env = os.environ if environ is None else environ
    if settings is not None:
        credentials, missing = resolve_credentials(settings, env)
        problems += missing + kafka_environment_problems(settings.usage, env)
        if settings.state.redis_configured:
            problems += redis_environment_problems(settings.state, env)
    if problems or settings is None:
        raise _error(text, source, problems)
    password = kafka_password(settings.usage, env)
    return LoadedConfig(settings, credentials, source, kafka_password=password)


def parse_settings(text: str, source: str = "<config>") -> Settings:
    """Schema and cross-reference validation only (no environment)."""
    settings, problems = _checked(text, source)
    if problems or settings is None:
        raise _error(text, source, problems)
    return settings


def _checked(text: str, source: str) -> tuple[Settings | None, list[Problem]]:
    """The settings (None if a required key is missing) and every schema and
    cross-reference problem; ConfigError at once for a TOML syntax error."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_render_syntax(source, exc)]) from None
    problems = schema_problems(document, Settings, ())
    try:
        settings = msgspec.convert(_without(document, problems), Settings)
    except msgspec.ValidationError:  # a required key is missing: nothing to cross-check
        return None, problems
    return settings, problems + semantic_problems(settings)


def _error(text: str, source: str, problems: list[Problem]) -> ConfigError:
    lines = _LineIndex(text)
    ordered = sorted(problems, key=lambda p: lines.find(p[0]) or 0)  # stable: ties keep order
    return ConfigError([_render(source, lines, p) for p in ordered])


def _without(document: dict[str, Any], problems: list[Problem]) -> dict[str, Any]:
    """A copy of `document` with each key a problem names removed (its default applies), so
    the cross-references can be checked on what is left. A missing key removes nothing."""
    pruned: dict[str, Any] = copy.deepcopy(document)
    for path, _ in problems:
        node: Any = pruned
        holder: tuple[dict[str, Any], str] | None = None
        for part in path:
            if isinstance(node, dict) and isinstance(part, str) and part in node:
                holder, node = (node, part), node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                holder = None  # the path does not exist as a whole: leave it
                break
        if holder is not None:
            del holder[0][holder[1]]
    return pruned


def resolve_credentials(
    settings: Settings, environ: Mapping[str, str]
) -> tuple[dict[str, BackendCredentials], list[Problem]]:
    """Build each backend's secret headers; every unset variable is one problem."""
    credentials: dict[str, BackendCredentials] = {}
    missing: list[Problem] = []
    for i, backend in enumerate(settings.backends):
        headers: dict[str, str] = {}
        wanted: list[tuple[str, str, KeyPath]] = []
        if backend.api_key_env:
            wanted.append(("authorization", backend.api_key_env, ("backends", i, "api_key_env")))
        for name, env_name in backend.secret_headers.items():
            wanted.append((name.lower(), env_name, ("backends", i, "secret_headers", name)))
        for header, env_name, where in wanted:
            value = environ.get(env_name)
            if not value:
                missing.append((where, f"environment variable {env_name} is not set"))
                continue
            headers[header] = f"Bearer {value}" if header == "authorization" else value
        credentials[backend.id] = BackendCredentials(headers)
    password_env = settings.config_service.password_env
    if password_env and not environ.get(password_env):
        missing.append(
            (("config_service", "password_env"), f"environment variable {password_env} is not set")
        )
    return credentials, missing


def schema_problems(value: Any, typ: Any, path: KeyPath) -> list[Problem]:
    """Walk `value` against a Struct type, collecting every problem instead of the first."""
    if isinstance(typ, type) and issubclass(typ, msgspec.Struct):
        return _struct_problems(value, typ, path)
    if get_origin(typ) is tuple and _is_struct_sequence(typ):
        if not isinstance(value, list):
            return [(path, f"expected an array of tables, got {_kind(value)}")]
        item_type = get_args(typ)[0]
        problems: list[Problem] = []
        for i, item in enumerate(value):
            problems += schema_problems(item, item_type, (*path, i))
        return problems
    try:
        msgspec.convert(value, typ)
    except msgspec.ValidationError as exc:
        where, reason = _from_validation(path, str(exc))
        return [(where, readable(reason, typ))]
    return []


def _struct_problems(value: Any, typ: type[msgspec.Struct], path: KeyPath) -> list[Problem]:
    if not isinstance(value, dict):
        return [(path, f"expected a table, got {_kind(value)}")]
    fields = {f.encode_name: f for f in msgspec.structs.fields(typ)}
    problems: list[Problem] = [
        ((*path, key), unknown_key(key, fields)) for key in value if key not in fields
    ]
    for name, info in fields.items():
        if name in value:
            problems += schema_problems(value[name], info.type, (*path, name))
        elif info.required:
            problems.append(((*path, name), "required key is missing"))
    return problems


def _is_struct_sequence(typ: Any) -> bool:
    args = get_args(typ)
    return (
        len(args) == 2
        and args[1] is Ellipsis
        and isinstance(args[0], type)
        and issubclass(args[0], msgspec.Struct)
    )


def _from_validation(path: KeyPath, message: str) -> Problem:
    # msgspec appends " - at `$[0].x`" for nested values; fold that into the key path.
    reason, _, where = message.partition(" - at `$")
    extra: list[str | int] = []
    for part in re.findall(r"\[(\d+)\]|\.([A-Za-z0-9_-]+)|\[\'([^']*)\'\]", where):
        index, name, quoted = part
        extra.append(int(index) if index else (name or quoted))
    return ((*path, *extra), reason)


def _kind(value: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "<root>"


def _render(source: str, lines: _LineIndex, problem: Problem) -> str:
    path, reason = problem
    line = lines.find(path)
    where = f"{source}:{line}" if line else source
    return f"{where}: {format_path(path)}: {reason}"


def _render_syntax(source: str, exc: tomllib.TOMLDecodeError) -> str:
    match = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
    reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
    if match:
        return f"{source}:{match.group(1)}: TOML syntax: {reason} (column {match.group(2)})"
    return f"{source}: TOML syntax: {reason}"


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(
    r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\")(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"))*)\s*="
)


class _LineIndex:
    """Maps key paths to the line that defines them, by scanning table headers and keys."""

    def __init__(self, text: str) -> None:
        self._lines: dict[KeyPath, int] = {}
        counters: dict[KeyPath, int] = {}
        current: KeyPath = ()
        for number, line in enumerate(text.splitlines(), start=1):
            header = _HEADER.match(line)
            if header:
                parts = _split_key(header.group(2))
                prefix: list[str | int] = []
                for part in parts[:-1]:
                    prefix.append(part)
                    if tuple(prefix) in counters:
                        prefix.append(counters[tuple(prefix)])
                table = (*prefix, parts[-1])
                if header.group(1) == "[[":
                    counters[table] = counters.get(table, -1) + 1
                    table = (*table, counters[table])
                current = table
                self._lines.setdefault(current, number)
                continue
            key = _KEY.match(line)
            if key:
                self._lines.setdefault((*current, *_split_key(key.group(1))), number)

    def find(self, path: KeyPath) -> int | None:
        """The line of the longest prefix of `path` that the text defines."""
        for end in range(len(path), 0, -1):
            line = self._lines.get(path[:end])
            if line is not None:
                return line
        return None


def _split_key(text: str) -> list[str]:
    return [part.strip().strip('"') for part in re.findall(r'"[^"]*"|[^.]+', text)]
