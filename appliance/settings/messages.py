"""Config problems in an operator's words: msgspec's validator text made readable, and the
closest known key for a typo (pure: no I/O)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any, Literal, get_args, get_origin

_TYPES = {
    "int": "a whole number",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "array": "an array",
    "object": "a table",
    "null": "nothing",
}
# The patterns of settings.py's constrained strings, said in words.
_PATTERNS = {
    r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$": (
        "must be an id: a letter or digit, then up to 127 letters, digits, '_', '.', ':' or '-'"
    ),
    r"^[0-9a-f]{64}$": (
        "must be a sha256: 64 lowercase hex digits (`routerctl keys create` prints it)"
    ),
}
_WRONG_TYPE = re.compile(r"^Expected `([^`]+)`, got `(\w+)`$")
_BOUND = re.compile(r"^Expected `(int|float)` (>=|>|<=|<) (\S+)$")
_LENGTH = re.compile(r"^Expected `(str|array)` of length (>=|<=) (\d+)$")
_REGEX = re.compile(r"^Expected `str` matching regex '(.*)'$")
_ENUM = re.compile(r"^Invalid enum value (.*)$")


def readable(reason: str, typ: Any = None) -> str:
    """msgspec's message for a bad value, in words; unknown shapes pass through."""
    if match := _WRONG_TYPE.match(reason):
        wanted = [t for t in match.group(1).split(" | ") if t != "null"]  # TOML has no null
        want = " or ".join(_TYPES.get(t, f"`{t}`") for t in wanted)
        return f"expected {want}, got {_TYPES.get(match.group(2), match.group(2))}"
    if match := _BOUND.match(reason):
        kind, op, bound = match.groups()
        bound = bound.removesuffix(".0") if kind == "float" else bound
        return f"must be {_TYPES[kind]} {op} {bound}"
    if match := _LENGTH.match(reason):
        kind, op, n = match.groups()
        unit = "characters" if kind == "str" else "items"
        return f"must have {'at least' if op == '>=' else 'at most'} {n} {unit}"
    if match := _REGEX.match(reason):
        return _PATTERNS.get(match.group(1), f"must match the pattern {match.group(1)}")
    if match := _ENUM.match(reason):
        allowed = _literals(typ)
        choices = ", ".join(repr(v) for v in allowed) if allowed else ""
        return f"{match.group(1)} is not allowed" + (f"; one of {choices}" if choices else "")
    return reason


def unknown_key(key: str, known: Iterable[str]) -> str:
    """An unknown key's problem: the closest known key if one is close, else all of them."""
    names = sorted(known)
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean '{close[0]}'?"
    return f"unknown key (known keys: {', '.join(names)})"


def _literals(typ: Any) -> list[Any]:
    """The values a Literal allows, looking through tuples, optionals and Annotated."""
    if get_origin(typ) is Literal:
        return list(get_args(typ))
    found: list[Any] = []
    for arg in get_args(typ):
        found += _literals(arg)
    return found
