"""The config service's documents: one object per key, `{prefix}{kind}/{name}`, JSON or TOML.

Pure: parses documents with the file's schema, merges them over the file's settings, and
renders a file's dynamic parts as documents (for `config push`). No etcd here.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from appliance.settings import ApiKey, Backend, Model, Org, Settings, semantic_problems
from appliance.settings.loader import format_path, schema_problems

KINDS: dict[str, type[msgspec.Struct]] = {
    "backends": Backend,
    "models": Model,
    "orgs": Org,
    "keys": ApiKey,
}
ID_FIELD = {"backends": "id", "models": "name", "orgs": "id", "keys": "id"}
OVERRIDES = "overrides"  # {prefix}overrides/{id}: the routing overrides, see etcd_overrides
MAX_DOCUMENT_BYTES = 256 * 1024


class DocumentError(Exception):
    """One document that cannot be used: its key and why (never its content)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Document:
    key: str
    kind: str
    name: str
    value: msgspec.Struct


def kind_of(prefix: str, key: str) -> tuple[str, str] | None:
    """(kind, name) of a key under `prefix`, or None for keys this router does not read."""
    rest = key.removeprefix(prefix)
    if rest == key or "/" not in rest:
        return None
    kind, _, name = rest.partition("/")
    return (kind, name) if kind in KINDS and name else None


def parse_document(prefix: str, key: str, raw: bytes) -> Document:
    """The object in `raw` (JSON if it starts with '{', else TOML), validated like the file."""
    found = kind_of(prefix, key)
    if found is None:
        raise DocumentError(key, f"not a {'|'.join(KINDS)} key under {prefix}")
    kind, name = found
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise DocumentError(key, f"larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
        data: Any = json.loads(text) if text.lstrip().startswith("{") else tomllib.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DocumentError(key, f"neither JSON nor TOML: {_first_line(exc)}") from None
    if not isinstance(data, dict):
        raise DocumentError(key, "must be one object")
    typ = KINDS[kind]
    id_field = ID_FIELD[kind]
    data.setdefault(id_field, name)
    if data[id_field] != name:
        raise DocumentError(key, f"{id_field} {data[id_field]!r} differs from the key's {name!r}")
    problems = schema_problems(data, typ, ())
    if problems:
        path, reason = problems[0]
        where = f"{format_path(path)}: " if path else ""
        raise DocumentError(key, f"{where}{reason}")
    return Document(key, kind, name, msgspec.convert(data, typ))


def merge(base: Settings, documents: Mapping[str, Document]) -> Settings:
    """The file's settings with its dynamic parts replaced by the documents (sorted by key)."""
    parts: dict[str, list[msgspec.Struct]] = {kind: [] for kind in KINDS}
    for key in sorted(documents):
        doc = documents[key]
        parts[doc.kind].append(doc.value)
    return msgspec.structs.replace(base, **{kind: tuple(v) for kind, v in parts.items()})


def merged_problems(settings: Settings) -> list[str]:
    """Cross-reference problems of a merged config, named by document where possible."""
    out = []
    for path, reason in semantic_problems(settings):
        if path and path[0] in KINDS and len(path) > 1 and isinstance(path[1], int):
            kind, index = str(path[0]), path[1]
            items: tuple[Any, ...] = getattr(settings, kind)
            name = getattr(items[index], ID_FIELD[kind])
            rest = format_path(path[2:]) if len(path) > 2 else ""
            out.append(f"{kind}/{name}{'.' + rest if rest else ''}: {reason}")
        else:
            out.append(f"{format_path(path)}: {reason}")
    return out


def render_documents(prefix: str, settings: Settings) -> dict[str, bytes]:
    """The dynamic parts of `settings` as documents (JSON), keyed as the router reads them."""
    out: dict[str, bytes] = {}
    for kind in KINDS:
        for item in getattr(settings, kind):
            name = getattr(item, ID_FIELD[kind])
            out[f"{prefix}{kind}/{name}"] = msgspec.json.encode(item, order="sorted")
    return out


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
