"""`routerctl config push` and the etcd half of `config show`: what a push would change, the
diff's text, and the one transaction that writes it.

A push file holds only the dynamic parts ([[backends]], [[models]], [[orgs]], [[keys]]). It is
rendered to documents exactly as the router reads them back (`parse_document`), merged over
the router's file like the router merges them, and written in one etcd transaction that
applies only if nothing under the prefix changed since it was read.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from appliance.configsvc.documents import (
    KINDS,
    Document,
    DocumentError,
    kind_of,
    merge,
    merged_problems,
    parse_document,
    render_documents,
)
from appliance.configsvc.etcd_client import EtcdClient, Snapshot
from appliance.settings import Settings, semantic_problems
from appliance.settings.loader import (
    ConfigError,
    format_path,
    load_text,
    parse_settings,
    resolve_credentials,
    schema_problems,
)

# etcd refuses a transaction with more operations than --max-txn-ops (default 128).
MAX_TXN_OPS = 128
_KIND_ORDER = {kind: i for i, kind in enumerate(KINDS)}
_ABSENT: Any = object()
# Cross-references a partial file (--no-prune) may leave to documents already in etcd.
_REFERENCES = (("backends", "backend"), ("org",), ("models",))


_WHOLE_HINT = (
    "routerctl: hint: with prune (the default) FILE is the whole config; to add to the "
    "documents etcd holds, push with --no-prune"
)


class PushError(Exception):
    """A push that must not or could not be written; one line, nothing was written."""


class PushConflict(PushError):
    """etcd changed under the prefix between the read and the transaction."""


@dataclass(frozen=True, slots=True)
class Change:
    op: Literal["+", "-", "~"]
    key: str  # the etcd key
    name: str  # "kind/name", as the diff shows it
    fields: tuple[tuple[str, str, str], ...] = ()  # (path, before, after) for "~", redacted


@dataclass(frozen=True, slots=True)
class Plan:
    prefix: str
    revision: int  # the revision the documents were read at
    puts: Mapping[str, bytes]
    deletes: tuple[str, ...]
    changes: tuple[Change, ...]
    kept: tuple[str, ...]  # documents FILE does not have, left in place (--no-prune)
    problems: tuple[str, ...]  # what the router would refuse in the result, by document

    @property
    def ops(self) -> int:
        return len(self.puts) + len(self.deletes)

    def summary(self) -> str:
        counts = {op: sum(c.op == op for c in self.changes) for op in "+~-"}
        noun = "change" if len(self.changes) == 1 else "changes"
        return (
            f"{len(self.changes)} {noun} ({counts['+']} added, {counts['~']} changed, "
            f"{counts['-']} deleted)"
        )


# -- the push file -----------------------------------------------------------------------
def parse_push_file(
    text: str, source: str, environ: Mapping[str, str] | None, *, standalone: bool
) -> Settings:
    """The file's dynamic parts, validated like `config validate` (file:line problems) and
    with its backends' variables checked in `environ` (None: not checked).

    `standalone` (with prune) requires the file's references to resolve within it; without,
    references may name documents already in etcd and are checked on the merged result.
    """
    if extra := [name for name in _top_level(text) if name not in KINDS]:
        raise ConfigError(
            [
                f"{source}{_line_of(text, name)}: {name}: not pushed to etcd: a push file holds "
                "only [[backends]], [[models]], [[orgs]] and [[keys]]; the rest stays in the "
                "router's file"
                for name in extra
            ]
        )
    try:
        settings = parse_settings(text, source)
    except ConfigError as exc:
        settings = _partial_or_raise(text, exc, standalone=standalone)
        missing = [] if environ is None else resolve_credentials(settings, environ)[1]
        if missing:
            raise ConfigError(
                [f"{source}: {format_path(p)}: {why}" for p, why in missing]
            ) from None
        return settings
    if environ is not None:
        load_text(text, source, environ)  # unset variables, with the file's lines
    return settings


def _partial_or_raise(text: str, exc: ConfigError, *, standalone: bool) -> Settings:
    partial, others = _partial_settings(text, exc)
    if partial is None or (standalone and others):
        raise exc
    if standalone:
        raise ConfigError([*exc.problems, _WHOLE_HINT])
    if others:
        raise ConfigError(others)
    return partial


def _partial_settings(text: str, exc: ConfigError) -> tuple[Settings | None, list[str]]:
    """The file's settings when its only problems are references (which documents already
    in etcd may satisfy), else None; and its other semantic problems, as file:line lines."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None, []
    if schema_problems(document, Settings, ()):
        return None, []
    settings = msgspec.convert(document, Settings)
    found = semantic_problems(settings)
    if len(found) != len(exc.problems):  # not parse_settings' semantic problems: keep them all
        return None, []
    others = [line for line, (path, _) in zip(exc.problems, found, strict=True)
              if not _is_reference(path)]  # fmt: skip
    return settings, others


def _is_reference(path: tuple[str | int, ...]) -> bool:
    names = tuple(p for p in path[2:] if isinstance(p, str))
    return len(path) > 2 and path[0] in KINDS and names in _REFERENCES


def _top_level(text: str) -> list[str]:
    try:
        return list(tomllib.loads(text))
    except tomllib.TOMLDecodeError:  # parse_settings reported it already
        return []


def _line_of(text: str, name: str) -> str:
    """':N' for the line that opens top-level table `name`, '' when not found."""
    pattern = re.compile(rf"^\s*(\[+\s*\"?{re.escape(name)}\"?\s*[.\]]|{re.escape(name)}\s*[.=])")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return f":{number}"
    return ""


def file_documents(prefix: str, settings: Settings) -> dict[str, Document]:
    """The file's objects as documents, parsed back as the router parses them."""
    out: dict[str, Document] = {}
    problems = []
    for key, raw in render_documents(prefix, settings).items():
        try:
            out[key] = parse_document(prefix, key, raw)
        except DocumentError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(problems)
    return out


# -- the plan ------------------------------------------------------------------------------
async def read_plan(
    client: EtcdClient, base: Settings, prefix: str, wanted: Mapping[str, Document], *, prune: bool
) -> Plan:
    """Read the documents under `prefix` now and work out the push; writes nothing."""
    snapshot = await client.get_prefix(prefix)
    return plan_push(base, prefix, wanted, snapshot, prune=prune)


def plan_push(
    base: Settings, prefix: str, wanted: Mapping[str, Document], snapshot: Snapshot, *, prune: bool
) -> Plan:
    """What to put and delete so etcd holds `wanted` (and, without prune, keeps the rest).

    Only keys the router reads as config documents are compared: overrides and foreign keys
    under the prefix are never touched. A document equal in content is not rewritten, even
    when its bytes differ (TOML in etcd, JSON from us).
    """
    current = {k: v for k, v in snapshot.items.items() if kind_of(prefix, k) is not None}
    puts: dict[str, bytes] = {}
    changes: list[Change] = []
    result: dict[str, Document] = {}
    kept: list[str] = []
    for key, doc in wanted.items():
        result[key] = doc
        raw = current.get(key)
        if raw is None:
            changes.append(Change("+", key, _name(prefix, key)))
        else:
            before = _parsed_or_none(prefix, key, raw)
            if before is not None and before.value == doc.value:
                continue
            changes.append(Change("~", key, _name(prefix, key), _fields(before, doc)))
        puts[key] = msgspec.json.encode(doc.value, order="sorted")
    deletes = []
    for key, raw in current.items():
        if key in wanted:
            continue
        if prune:
            deletes.append(key)
            changes.append(Change("-", key, _name(prefix, key)))
        else:
            kept.append(key)
            if (kept_doc := _parsed_or_none(prefix, key, raw)) is not None:
                result[key] = kept_doc
    problems = tuple(f"{prefix}{p}" for p in merged_problems(merge(base, result)))
    changes.sort(key=lambda c: _sort_key(prefix, c.key))
    return Plan(prefix, snapshot.revision, puts, tuple(deletes), tuple(changes),
                tuple(sorted(kept)), problems)  # fmt: skip


async def read_documents(
    client: EtcdClient, prefix: str
) -> tuple[int, dict[str, Document], list[str]]:
    """The config documents under `prefix` now: revision, the valid ones by key, and one
    line per document the router would reject."""
    snapshot = await client.get_prefix(prefix)
    documents: dict[str, Document] = {}
    problems = []
    for key, raw in sorted(snapshot.items.items()):
        if kind_of(prefix, key) is None:
            continue
        try:
            documents[key] = parse_document(prefix, key, raw)
        except DocumentError as exc:
            problems.append(str(exc))
    return snapshot.revision, documents, problems


async def apply_plan(client: EtcdClient, plan: Plan) -> int:
    """Write the plan in one transaction; the new revision. PushConflict when anything under
    the prefix (overrides too) changed since the plan was read; nothing is written then."""
    if plan.ops > MAX_TXN_OPS:
        raise PushError(too_many_ops(plan))
    result = await client.txn_put_delete(
        plan.puts, plan.deletes, expect_revision=plan.revision, compare_prefix=plan.prefix
    )
    if not result.succeeded:
        raise PushConflict(
            f"etcd changed under {plan.prefix} since it was read at revision {plan.revision} "
            f"(now {result.revision}); nothing was written: run again"
        )
    return result.revision


def too_many_ops(plan: Plan) -> str:
    return (
        f"{plan.ops} writes exceed etcd's limit of {MAX_TXN_OPS} per transaction; nothing was "
        "written: push fewer changes at a time (split FILE and push each part with --no-prune)"
    )


def diff_lines(plan: Plan) -> list[str]:
    """`+ models/chat`, `- keys/old`, `~ backends/a` with one indented line per changed field."""
    lines = []
    for change in plan.changes:
        lines.append(f"{change.op} {change.name}")
        lines += [f"    {path}: {before} -> {after}" for path, before, after in change.fields]
    return lines


def redact(value: str) -> str:
    """A key's or token's sha256 as its first 8 characters: enough to tell them apart."""
    return f"{value[:8]}…"


def _fields(before: Document | None, after: Document) -> tuple[tuple[str, str, str], ...]:
    if before is None:
        return (("(document)", "invalid in etcd", "replaced"),)
    found = _diff(msgspec.to_builtins(before.value), msgspec.to_builtins(after.value), "")
    return tuple((path, _show(path, b), _show(path, a)) for path, b, a in found)


def _diff(before: Any, after: Any, path: str) -> list[tuple[str, Any, Any]]:
    if before == after:
        return []
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for k in sorted(before.keys() | after.keys()):
            out += _diff(
                before.get(k, _ABSENT), after.get(k, _ABSENT), f"{path}.{k}" if path else k
            )
        return out
    if _table_list(before) and _table_list(after) and (before or after):
        items = max(len(before), len(after))
        out = []
        for i in range(items):
            b = before[i] if i < len(before) else _ABSENT
            a = after[i] if i < len(after) else _ABSENT
            out += _diff(b, a, f"{path}[{i}]")
        return out
    return [(path, before, after)]


def _table_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, dict) for v in value)


def _show(path: str, value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    if path.endswith("sha256") and isinstance(value, str):
        return redact(value)
    return msgspec.json.encode(value).decode()


def _parsed_or_none(prefix: str, key: str, raw: bytes) -> Document | None:
    try:
        return parse_document(prefix, key, raw)
    except DocumentError:
        return None


def _name(prefix: str, key: str) -> str:
    return key.removeprefix(prefix)


def _sort_key(prefix: str, key: str) -> tuple[int, str]:
    found = kind_of(prefix, key)
    kind, name = found if found is not None else ("", key)
    return _KIND_ORDER.get(kind, len(KINDS)), name
