"""Lookups: the audit log for admins, and an org's own usage records for its API keys.

`GET /v1/admin/audit` takes an admin token (viewer or operator) and strictly parsed filters:
an unknown, repeated, empty or malformed parameter is a 400 naming it, never ignored, so a
typo cannot silently widen a search. `GET /v1/usage/{request_id}` takes an org API key and
answers the stored record only to its own org; another org's record, an unknown id and a
malformed id all get the same 404, so ids cannot be probed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
from quart import Blueprint, Response, request

from appliance.audit.events import KINDS, AuditEvent
from appliance.audit.ports import AuditStore
from appliance.auth.admin import ADMIN_TOKEN_PREFIX, AdminTokens
from appliance.auth.keyring import bearer_token
from appliance.errors import InvalidApiKey, InvalidRequest, UsageRecordNotFound
from appliance.http.admin import authorize
from appliance.http.admin_shapes import AuditEvents, AuditEventView
from appliance.http.context import request_context
from appliance.runtime import Runtime

# (request or record id, the caller's org) -> the record's JSON, only if it is that org's.
UsageLookup = Callable[[str, str], Awaitable[bytes | None]]
"""A request id -> (the record's org, the record's JSON bytes), or None if there is none."""

_JSON = "application/json"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_MAX_FILTER = 256
REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")  # as EdgeMiddleware accepts them
# [0-9], not \d: \d also matches other scripts' digits.
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")
_DATE_ONLY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_LIMIT = re.compile(r"[0-9]{1,4}")
_FILTERS = ("request_id", "org", "kind", "since", "until", "limit")


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """The filters of one audit lookup, validated."""

    request_id: str | None = None
    org: str | None = None
    kind: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = DEFAULT_LIMIT


def lookup_blueprint(
    get_runtime: Callable[[], Runtime],
    tokens: AdminTokens,
    audit: AuditStore,
    usage_lookup: UsageLookup,
) -> Blueprint:
    bp = Blueprint("lookup", __name__)

    @bp.get("/v1/admin/audit")
    async def audit_lookup() -> Response:
        authorize(tokens, "viewer")
        query = parse_audit_query(request.args.items(multi=True))
        events = await audit.query(
            kind=query.kind,
            org=query.org,
            request_id=query.request_id,
            since=query.since,
            until=query.until,
            limit=query.limit,
        )
        return _json(AuditEvents([render_event(e) for e in events]))

    # `path`: an id with a slash is malformed, and gets the same 404 as any other bad id.
    @bp.get("/v1/usage/<path:request_id>")
    async def usage_record(request_id: str) -> Response:
        authorization = request.headers.get("authorization")
        try:
            principal = get_runtime().keyring.resolve(authorization)
        except InvalidApiKey:
            if (bearer_token(authorization) or "").startswith(ADMIN_TOKEN_PREFIX):
                raise InvalidApiKey(
                    "This is an admin token; usage records are read with an org API key."
                ) from None
            raise
        context = request_context(request.scope)
        context.org, context.key_id = principal.org_id, principal.key_id
        found = None
        if REQUEST_ID.fullmatch(request_id):
            found = await usage_lookup(request_id, principal.org_id)
        if found is None:
            raise _not_found(request_id)
        return Response(found, content_type=_JSON, headers={"cache-control": "no-store"})

    return bp


def parse_audit_query(items: Iterable[tuple[str, str]]) -> AuditQuery:
    """Query-string pairs -> AuditQuery, or InvalidRequest naming the bad parameter."""
    values: dict[str, str] = {}
    for name, value in items:
        if name not in _FILTERS:
            known = ", ".join(_FILTERS)
            raise InvalidRequest(f"Unknown parameter: '{name}' (known: {known}).", param=name)
        if name in values:
            raise InvalidRequest(f"Parameter '{name}' is given more than once.", param=name)
        if not value:
            raise InvalidRequest(f"Parameter '{name}' is empty; omit it instead.", param=name)
        if len(value) > _MAX_FILTER:
            raise InvalidRequest(f"Parameter '{name}' is too long.", param=name)
        values[name] = value
    request_id = values.get("request_id")
    if request_id is not None and not REQUEST_ID.fullmatch(request_id):
        raise InvalidRequest(
            "Invalid 'request_id': expected up to 128 characters of A-Z a-z 0-9 . _ : -.",
            param="request_id",
        )
    kind = values.get("kind")
    if kind is not None and kind not in KINDS:
        raise InvalidRequest(
            f"Invalid 'kind': {kind!r} is not an audit event kind (kinds: {', '.join(KINDS)}).",
            param="kind",
        )
    since = _time_param(values, "since")
    until = _time_param(values, "until")
    if since is not None and until is not None and since > until:
        raise InvalidRequest("Invalid 'until': it is before 'since'.", param="until")
    return AuditQuery(
        request_id=request_id,
        org=values.get("org"),
        kind=kind,
        since=since,
        until=until,
        limit=_limit_param(values.get("limit")),
    )


def parse_time(text: str) -> float:
    """Unix seconds or ISO-8601 with a timezone (a date alone is 00:00 UTC) -> unix seconds."""
    if _UNIX_SECONDS.fullmatch(text):
        return float(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("expected unix seconds or ISO-8601 such as 2026-11-26T10:00:00Z") from None
    if parsed.tzinfo is None:
        if not _DATE_ONLY.fullmatch(text):
            raise ValueError("an ISO-8601 time needs a timezone, e.g. 2026-11-26T10:00:00Z")
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def iso_time(seconds: float) -> str:
    """Unix seconds -> '2026-11-26T10:00:00.250Z' (UTC, milliseconds)."""
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def render_event(event: AuditEvent) -> AuditEventView:
    return AuditEventView(
        id=event.id,
        kind=event.kind,
        time=event.time,
        time_iso=iso_time(event.time),
        actor=event.actor,
        org=event.org,
        key_id=event.key_id,
        request_id=event.request_id,
        subject=event.subject,
        reason=event.reason,
        before=event.before,
        after=event.after,
    )


def _time_param(values: dict[str, str], name: str) -> float | None:
    text = values.get(name)
    if text is None:
        return None
    try:
        seconds = parse_time(text)
    except ValueError as exc:
        raise InvalidRequest(f"Invalid '{name}': {exc}.", param=name) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidRequest(f"Invalid '{name}': it is before 1970.", param=name)
    return seconds


def _limit_param(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not _LIMIT.fullmatch(text) or not 1 <= int(text) <= MAX_LIMIT:
        raise InvalidRequest(
            f"Invalid 'limit': expected an integer from 1 to {MAX_LIMIT}.", param="limit"
        )
    return int(text)


def _not_found(request_id: str) -> UsageRecordNotFound:
    """The same answer for another org's record and an unknown id; a malformed id is not echoed."""
    if not REQUEST_ID.fullmatch(request_id):
        return UsageRecordNotFound()
    return UsageRecordNotFound(f"No usage record with the id '{request_id}' for your organization.")


def _json(value: object) -> Response:
    return Response(msgspec.json.encode(value), content_type=_JSON)
