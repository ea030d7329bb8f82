"""The OpenAPI 3.1 document of the public and admin API, and GET /v1/openapi.json serving it.

Built from api_routes.OPERATIONS and the Structs the routes answer with (msgspec's JSON
Schema), once per process: the route sends the same bytes every time. docs/openapi.json is
the same document (`python -m appliance.http.openapi docs/openapi.json` rewrites it).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
from quart import Blueprint, Response

from appliance import BUILD
from appliance.errors import ErrorEnvelope
from appliance.http.api_routes import OPERATIONS, Operation
from appliance.http.openai_shapes import StreamEvent

_REFS = "#/components/schemas/{name}"
_PATH_PARAM = re.compile(r"\{([^}]+)\}")
_STRING: dict[str, Any] = {"type": "string"}
_ERRORS: dict[int, str] = {
    400: "The request is invalid (`param` names the field).",
    401: "Missing or unknown credentials.",
    403: "The key, its org or the token's role may not do this.",
    404: "No such model, backend, override or record.",
    408: "The request body arrived too slowly.",
    413: "The request body is larger than `[server] max_body_bytes`.",
    429: "A rate limit, concurrency limit or budget (`budget_exceeded`, not retriable).",
    502: "The backend failed or answered with an error.",
    503: "No backend, limiter, store or usage sink is available right now.",
    504: "The backend did not answer in time.",
}
_SECURITY: dict[str, dict[str, Any]] = {
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An org API key (`routerctl keys create --org ORG`).",
    },
    "adminToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "An admin token (`[admin] tokens`): role `viewer` reads, `operator` "
        "also changes; each operation's `x-required-role` says which it needs.",
    },
}
_REQUEST_ID = {
    "description": "The request's id (the client's own, or one the router made).",
    "required": True,
    "schema": _STRING,
}
_REQUEST_ID_HEADER = {"x-request-id": {"$ref": "#/components/headers/RequestId"}}


def build_document(operations: Iterable[Operation] = OPERATIONS) -> dict[str, Any]:
    """The whole document as JSON-able values."""
    operations = list(operations)
    shapes = [ErrorEnvelope, StreamEvent, *_types(operations)]
    refs, schemas = msgspec.json.schema_components(shapes, ref_template=_REFS)
    ref_of = dict(zip(map(_key, shapes), refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method] = _operation(op, ref_of)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "routerctl",
            "version": BUILD.version,
            "description": "OpenAI-compatible inference router: public and admin API.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {str(s): _error(s, ref_of) for s in sorted(_statuses(operations))},
            "headers": {"RequestId": _REQUEST_ID},
            "securitySchemes": _SECURITY,
        },
    }


def encode_document(document: dict[str, Any]) -> bytes:
    """Indented, keys in build order, with a final newline: the served and the docs bytes."""
    return msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n"


def openapi_blueprint(document: bytes) -> Blueprint:
    """GET /v1/openapi.json (no auth): `document`, encoded once by the caller."""
    bp = Blueprint("openapi", __name__)

    @bp.get("/v1/openapi.json")
    async def openapi() -> Response:
        return Response(document, content_type="application/json")

    return bp


def _key(shape: Any) -> str:
    return repr(shape)  # typing aliases (dict[str, Any]) are not hashable alike everywhere


def _types(operations: list[Operation]) -> list[Any]:
    found: dict[str, Any] = {}
    for op in operations:
        for shape in (op.answer, op.body):
            if shape is not None:
                found.setdefault(_key(shape), shape)
    return list(found.values())


def _error_statuses(op: Operation) -> list[int]:
    statuses = set(op.errors)
    if op.auth != "none":
        statuses.add(401)
    if op.auth in ("api_key", "operator"):
        statuses.add(403)  # a disabled key or org; a viewer token where operator is needed
    if op.body is not None:
        statuses.update((400, 413))
    return sorted(statuses - set(op.also))


def _statuses(operations: list[Operation]) -> set[int]:
    return {s for op in operations for s in _error_statuses(op)}


def _operation(op: Operation, ref_of: dict[str, dict[str, Any]]) -> dict[str, Any]:
    answer = {"application/json": {"schema": ref_of[_key(op.answer)]}}
    if op.streams:
        # OpenAPI 3.1 reads an event stream's `schema` as each event's (3.2 calls it itemSchema).
        answer["text/event-stream"] = {"schema": ref_of[_key(StreamEvent)]}
    ok = {"description": "OK", "headers": _REQUEST_ID_HEADER, "content": answer}
    responses: dict[str, Any] = {"200": ok}
    for status in op.also:
        responses[str(status)] = {**ok, "description": "See the body"}
    for status in _error_statuses(op):
        responses[str(status)] = {"$ref": f"#/components/responses/{status}"}
    spec: dict[str, Any] = {
        "operationId": _operation_id(op),
        "summary": op.summary,
        "tags": [op.tag],
        "security": _security(op),
        "parameters": _parameters(op),
        "responses": responses,
    }
    if op.auth in ("viewer", "operator"):
        spec["x-required-role"] = op.auth
    if op.body is not None:
        spec["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": ref_of[_key(op.body)]}},
        }
    return spec


def _operation_id(op: Operation) -> str:
    words = re.findall(r"[a-z0-9]+", op.path.removeprefix("/v1/"))
    return "_".join([op.method, *words])


def _security(op: Operation) -> list[dict[str, list[str]]]:
    if op.auth == "none":
        return []
    return [{"apiKey" if op.auth == "api_key" else "adminToken": []}]


def _parameters(op: Operation) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {**_STRING, "minLength": 1}}
        for name in _PATH_PARAM.findall(op.path)
    ]
    found.extend(
        {"name": q.name, "in": "query", "required": False, "schema": q.schema,
         "description": q.description}
        for q in op.query
    )  # fmt: skip
    return found


def _error(status: int, ref_of: dict[str, dict[str, Any]]) -> dict[str, Any]:
    headers: dict[str, Any] = dict(_REQUEST_ID_HEADER)
    if status == 429:
        headers["retry-after"] = {
            "description": "Seconds to wait (not on `budget_exceeded`).",
            "schema": {"type": "integer"},
        }
    return {
        "description": _ERRORS[status],
        "headers": headers,
        "content": {"application/json": {"schema": ref_of[_key(ErrorEnvelope)]}},
    }


if __name__ == "__main__":
    # Rewrites the docs copy: python -m appliance.http.openapi docs/openapi.json
    Path(sys.argv[1]).write_bytes(encode_document(build_document()))
