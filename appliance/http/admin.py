"""Admin routes for routing control: see backends and overrides, degrade, drain, pin, restore.

Every route needs an admin token (`viewer` reads, `operator` changes); the token id is the
actor the routing control audits with the operator's `reason`. Bodies are decoded strictly:
an unknown field or a wrong type is a 400 naming the field, never silently ignored.
"""

from __future__ import annotations

import re
from typing import Annotated, TypeVar

import msgspec
from msgspec import Meta, Struct
from quart import Blueprint, Response, request

from appliance.auth.admin import AdminTokens, Role
from appliance.errors import InvalidJson, InvalidRequest
from appliance.http.admin_shapes import (
    BackendList,
    BackendState,
    OverrideList,
    OverrideView,
    Restored,
)
from appliance.http.context import request_context
from appliance.routing.overrides import Override
from appliance.routing.ports import BackendView, RoutingControl

_JSON = "application/json"
_MAX_REASON = 1000
_MAX_TTL_S = 366 * 86400  # "until cleared" is `null`; a huge number is more likely a typo

# Not blank: checked after decoding, with a message that says why (the schema says it too).
Reason = Annotated[str, Meta(max_length=_MAX_REASON, extra_json_schema={"pattern": r"\S"})]
Ttl = Annotated[float, Meta(gt=0, le=_MAX_TTL_S)]


class _Body(Struct, forbid_unknown_fields=True, kw_only=True):
    reason: Reason


Factor = Annotated[float, Meta(gt=0, lt=1)]


class DegradeBody(_Body):
    # `factor` is the name the override and `override list` show; `weight` is its old alias.
    factor: Factor | None = None
    weight: Factor | None = None
    ttl_s: Ttl | None = None

    def chosen(self) -> float:
        """The factor asked for; a 400 unless exactly one of the two names carries it."""
        chosen = self.factor if self.weight is None else self.weight
        if chosen is None or (self.factor is not None and self.weight is not None):
            raise InvalidRequest(
                "Give the degrade factor as 'factor' (0 < factor < 1); 'weight' is its "
                "older name, accepted alone.",
                param="factor",
            )
        return chosen


class DrainBody(_Body):
    ttl_s: Ttl | None = None


class RestoreBody(_Body):
    pass


class PinBody(_Body):
    kind: Annotated[str, Meta(extra_json_schema={"enum": ["pin"]})]  # others: a 400 that helps
    model: Annotated[str, Meta(min_length=1)]
    backend: Annotated[str, Meta(min_length=1)]
    ttl_s: Ttl | None = None


class ClearBody(_Body):
    pass


_B = TypeVar("_B", bound=Struct)
# msgspec says where a value is wrong as "... - at `$.field`", or names a missing/unknown field.
_AT_PATH = re.compile(r" - at `\$\.?([^`\[]*)[^`]*`$")
_NAMED_FIELD = re.compile(r"field `([^`]+)`")
_TYPE_WORD = re.compile(r"`(float|int|str|bool|object|array|null)`")
_TYPE_WORDS = {
    "float": "a number",
    "int": "an integer",
    "str": "a string",
    "bool": "a boolean",
    "object": "an object",
    "array": "an array",
    "null": "null",
}


def admin_blueprint(control: RoutingControl, tokens: AdminTokens) -> Blueprint:
    bp = Blueprint("admin", __name__)

    def actor(need: Role) -> str:
        return authorize(tokens, need)

    @bp.get("/v1/admin/backends")
    async def list_backends() -> Response:
        actor("viewer")
        return _json(BackendList([render_backend(b) for b in control.backends()]))

    @bp.post("/v1/admin/backends/<backend_id>/degrade")
    async def degrade(backend_id: str) -> Response:
        who = actor("operator")
        body = await parse_body(DegradeBody)
        made = await control.degrade(backend_id, body.chosen(), body.reason, who, body.ttl_s)
        return _json(render_override(made))

    @bp.post("/v1/admin/backends/<backend_id>/drain")
    async def drain(backend_id: str) -> Response:
        who = actor("operator")
        body = await parse_body(DrainBody)
        made = await control.drain(backend_id, body.reason, who, body.ttl_s)
        return _json(render_override(made))

    @bp.post("/v1/admin/backends/<backend_id>/restore")
    async def restore(backend_id: str) -> Response:
        who = actor("operator")
        body = await parse_body(RestoreBody)
        removed = await control.restore(backend_id, body.reason, who)
        return _json(Restored([render_override(o) for o in removed]))

    @bp.get("/v1/admin/overrides")
    async def list_overrides() -> Response:
        actor("viewer")
        return _json(OverrideList([render_override(o) for o in control.overrides()]))

    @bp.post("/v1/admin/overrides")
    async def create_override() -> Response:
        who = actor("operator")
        body = await parse_body(PinBody)
        if body.kind != "pin":
            raise InvalidRequest(
                "Only kind 'pin' can be created here; degrade and drain a backend with "
                "POST /v1/admin/backends/{id}/degrade or /drain.",
                param="kind",
            )
        made = await control.pin(body.model, body.backend, body.reason, who, body.ttl_s)
        return _json(render_override(made))

    @bp.delete("/v1/admin/overrides/<override_id>")
    async def clear(override_id: str) -> Response:
        who = actor("operator")
        body = await parse_body(ClearBody, reason_from_query=True)
        return _json(render_override(await control.clear(override_id, body.reason, who)))

    return bp


def authorize(tokens: AdminTokens, need: Role) -> str:
    """This request's admin token id (the actor), recorded as its key id; 401/403 otherwise."""
    token_id = tokens.authorize(request.headers.get("authorization"), need)
    request_context(request.scope).key_id = f"admin:{token_id}"
    return token_id


def render_override(override: Override) -> OverrideView:
    return OverrideView(
        id=override.id,
        kind=override.kind.value,
        backend=override.backend,
        model=override.model,
        factor=override.factor,
        reason=override.reason,
        actor=override.actor,
        created_at=override.created_at,
        expires_at=override.expires_at,
    )


def render_backend(backend: BackendView) -> BackendState:
    return BackendState(
        id=backend.id,
        models=list(backend.models),
        weight=backend.weight,
        effective_weight=backend.effective_weight,
        health=backend.health,
        inflight=backend.inflight,
        max_concurrency=backend.max_concurrency,
        ewma_latency_ms=backend.ewma_latency_ms,
        ejections=backend.ejections,
        override=None if backend.override is None else render_override(backend.override),
    )


async def parse_body(kind: type[_B], *, reason_from_query: bool = False) -> _B:
    """This request's JSON body as `kind`, or a 400 naming the offending field."""
    # The edge buffers (and bounds) POST bodies; a DELETE body still waits in Quart.
    raw = request_context(request.scope).body or await request.get_data()
    if not raw.strip():
        # DELETE clients often cannot send a body; they may say why in `?reason=` instead.
        query_reason = request.args.get("reason") if reason_from_query else None
        raw = b"{}" if query_reason is None else msgspec.json.encode({"reason": query_reason})
    try:
        body = msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        message, param = _explain(str(exc))
        raise InvalidRequest(message, param=param) from None
    except msgspec.DecodeError:
        raise InvalidJson() from None
    except RecursionError:
        # Typed fields stop a deep value at its first bracket; this guards a future `Any`.
        raise InvalidJson("The request body nests too deeply.") from None
    if isinstance(body, _Body) and not body.reason.strip():
        raise InvalidRequest(
            "A non-empty 'reason' is required: say why, it goes to the audit log.", param="reason"
        )
    return body


def _explain(error: str) -> tuple[str, str | None]:
    """msgspec's validation message -> (a readable message, the top-level field it concerns)."""
    at = _AT_PATH.search(error)
    if at is not None:
        field = at.group(1) or None
        text = _plain(error[: at.start()])
        return (f"Invalid '{field}': {text}." if field else f"Invalid body: {text}.", field)
    named = _NAMED_FIELD.search(error)
    if "missing required field" in error and named is not None:
        return f"Missing required parameter: '{named.group(1)}'.", named.group(1)
    if "unknown field" in error and named is not None:
        return f"Unknown parameter: '{named.group(1)}'.", named.group(1)
    return f"Invalid body: {_plain(error)}.", None


def _plain(text: str) -> str:
    """'Expected `float` < 1.0' -> 'expected a number < 1.0'."""
    text = _TYPE_WORD.sub(lambda m: _TYPE_WORDS[m.group(1)], text)
    return text[:1].lower() + text[1:]


def _json(value: object) -> Response:
    return Response(msgspec.json.encode(value), content_type=_JSON)
