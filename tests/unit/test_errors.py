"""The error catalog: shapes, statuses and the docs listing every error."""

from __future__ import annotations

from pathlib import Path

import msgspec

from appliance.errors import InvalidRequest, RouterError, UpstreamTimeout, catalog

DOCS = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def test_body_has_openai_shape() -> None:
    """Errors render as {"error": {message, type, param, code}}."""
    error = InvalidRequest("bad", param="model")
    assert msgspec.json.decode(error.body()) == {
        "error": {
            "message": "bad",
            "type": "invalid_request_error",
            "param": "model",
            "code": "invalid_request",
        }
    }


def test_retry_after_header() -> None:
    """retry_after_s becomes a whole-second Retry-After header, at least 1."""
    assert UpstreamTimeout(retry_after_s=0.2).headers() == {"retry-after": "1"}
    assert UpstreamTimeout().headers() == {}


def test_codes_are_unique_and_statuses_are_sdk_statuses() -> None:
    """Every class has its own code and a status the OpenAI SDKs map."""
    classes = catalog()
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes))
    assert {c.status for c in classes} <= {
        400,
        401,
        403,
        404,
        405,
        408,
        409,
        413,
        415,
        422,
        429,
        431,
        500,
        502,
        503,
        504,
    }
    assert RouterError not in classes


def test_docs_list_every_error() -> None:
    """docs/errors.md names every code in the catalog."""
    text = DOCS.read_text(encoding="utf-8")
    missing = [c.code for c in catalog() if f"`{c.code}`" not in text]
    assert missing == []
