"""The OpenAPI document: in step with the routes the app serves, and with its copy in docs/."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from quart import Quart

import appliance.app
from appliance.app import build_app
from appliance.errors import ErrorEnvelope, InvalidRequest
from appliance.http import fast_path
from appliance.http.admin_shapes import OverrideView
from appliance.http.errors import SERVED
from appliance.http.openapi import build_document, encode_document
from appliance.settings.loader import load_text

DOCS_COPY = Path(__file__).parents[2] / "docs" / "openapi.json"
_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")  # werkzeug's <converter:name>


def _config(tmp_path: Path) -> str:
    return f"""
[server]
metrics_listen = ""

[state]
dir = "{tmp_path}"

[[backends]]
id = "b"
url = "http://127.0.0.1:9/v1"

[[models]]
name = "m"
backends = [{{ backend = "b" }}]
"""


def served_routes(app: Quart) -> set[tuple[str, str]]:
    """(METHOD, path in OpenAPI's form) of every Quart rule and every fast-path route."""
    routes = {
        (method, _CONVERTER.sub(r"{\1}", rule.rule))
        for rule in app.url_map.iter_rules()
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    return routes | {("POST", path) for path in fast_path.ROUTES}


def documented_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }


def test_document_lists_exactly_the_served_routes(tmp_path: Path) -> None:
    """Every route the app serves is in the document, and the document lists no other."""
    built = build_app(load_text(_config(tmp_path), "router.toml"))
    served = served_routes(built.quart)
    assert ("GET", "/v1/admin/backends") in served
    assert ("POST", "/v1/chat/completions") in served
    assert documented_routes(build_document()) == served


def test_a_route_without_an_entry_fails_the_contract(tmp_path: Path) -> None:
    """A route added to the app alone makes the two sets differ (the check can fail)."""
    built = build_app(load_text(_config(tmp_path), "router.toml"))

    @built.quart.get("/v1/admin/new-thing")
    async def new_thing() -> str:
        return "{}"

    missing = served_routes(built.quart) - documented_routes(build_document())
    assert missing == {("GET", "/v1/admin/new-thing")}


def test_docs_copy_is_current() -> None:
    """docs/openapi.json is the document the code builds (regenerate it when this fails)."""
    fresh = encode_document(build_document())
    assert DOCS_COPY.read_bytes() == fresh, (
        "docs/openapi.json is stale: python -m appliance.http.openapi docs/openapi.json"
    )


async def test_route_serves_the_document_built_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /v1/openapi.json answers the docs copy's bytes, built at startup, not per request."""
    builds: list[int] = []

    def counting_build() -> dict[str, Any]:
        builds.append(1)
        return build_document()

    monkeypatch.setattr(appliance.app, "build_document", counting_build)
    built = build_app(load_text(_config(tmp_path), "router.toml"))
    client = built.quart.test_client()
    bodies = []
    for _ in range(2):
        response = await client.get("/v1/openapi.json")
        assert response.status_code == 200
        assert response.content_type == "application/json"
        bodies.append(await response.get_data())
    assert bodies == [DOCS_COPY.read_bytes()] * 2
    assert len(builds) == 1


def test_error_schema_is_the_shape_errors_are_sent_in() -> None:
    """The document's error schema decodes a real error body strictly, field for field."""
    body = InvalidRequest("bad", param="model").body()
    envelope = msgspec.json.decode(body, type=ErrorEnvelope)
    assert msgspec.to_builtins(envelope) == json.loads(body)
    schemas = build_document()["components"]["schemas"]
    assert schemas["ErrorDetail"]["required"] == ["message", "type", "param", "code"]


def test_operations_name_their_auth_and_role() -> None:
    """Admin operations need the admin token with a role; public ones the API key; status none."""
    paths = build_document()["paths"]
    assert paths["/v1/admin/backends"]["get"]["x-required-role"] == "viewer"
    degrade = paths["/v1/admin/backends/{backend_id}/degrade"]["post"]
    assert degrade["x-required-role"] == "operator"
    assert degrade["security"] == [{"adminToken": []}]
    assert paths["/v1/chat/completions"]["post"]["security"] == [{"apiKey": []}]
    assert paths["/v1/status/readyz"]["get"]["security"] == []
    assert "403" in degrade["responses"]
    assert "403" not in paths["/v1/admin/backends"]["get"]["responses"]


def test_answer_schemas_come_from_the_structs_the_routes_send() -> None:
    """An override as the admin API renders it has exactly the document's fields."""
    schema = build_document()["components"]["schemas"]["OverrideView"]
    assert set(schema["properties"]) == set(OverrideView.__struct_fields__)


def test_unserved_path_404_names_the_documented_public_routes() -> None:
    """The 404 for an unserved /v1 path lists the org-key routes of the route table."""
    served = SERVED.split(", ")
    assert "GET /v1/usage/{request_id}" in served
    assert "POST /v1/chat/completions" in served
    assert not [route for route in served if "/admin/" in route or "/status/" in route]
