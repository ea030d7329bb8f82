"""Request bodies nested too deeply are refused as invalid JSON, whatever their size."""

from __future__ import annotations

import pytest

from appliance.errors import InvalidJson, InvalidRequest
from appliance.upstream.payload import MAX_JSON_DEPTH, Endpoint, parse_request

MESSAGES = b'"messages": [{"role": "user", "content": "hi"}]'


def with_extra(value: bytes) -> bytes:
    """A valid chat body whose `metadata` field is `value`; the object itself is level 1."""
    return b'{"model": "m", ' + MESSAGES + b', "metadata": ' + value + b"}"


def nested(levels: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * levels + closer * levels


def test_nesting_up_to_the_bound_is_accepted() -> None:
    """A body exactly MAX_JSON_DEPTH levels deep parses."""
    parsed = parse_request(Endpoint.CHAT, with_extra(nested(MAX_JSON_DEPTH - 1)))
    assert parsed.model == "m"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(nested(MAX_JSON_DEPTH), id="one-level-too-deep"),
        pytest.param(b'{"a": ' * MAX_JSON_DEPTH + b"1" + b"}" * MAX_JSON_DEPTH, id="objects"),
        pytest.param(nested(100_000), id="100k-deep"),
    ],
)
def test_nesting_beyond_the_bound_is_invalid_json(value: bytes) -> None:
    """One level more than MAX_JSON_DEPTH, in arrays or objects, is a 400 naming the bound."""
    with pytest.raises(InvalidJson, match=f"deeper than {MAX_JSON_DEPTH}"):
        parse_request(Endpoint.CHAT, with_extra(value))


def test_unbalanced_deep_nesting_is_a_400_not_a_crash() -> None:
    """100,000 openers that never close are refused like any bad JSON, without recursing out."""
    with pytest.raises(InvalidRequest):
        parse_request(Endpoint.CHAT, b"[" * 100_000)


def test_brackets_inside_strings_do_not_count() -> None:
    """Brackets in string values are text, however many."""
    text = b'"' + b"[{" * 500 + b'\\"]' * 100 + b'"'
    assert parse_request(Endpoint.CHAT, with_extra(b"[" + text + b"]")).model == "m"


def test_many_shallow_containers_are_accepted() -> None:
    """Hundreds of sibling objects (a long conversation) are wide, not deep."""
    messages = b", ".join([b'{"role": "user", "content": [{"type": "text"}]}'] * 500)
    body = b'{"model": "m", "messages": [' + messages + b"]}"
    assert parse_request(Endpoint.CHAT, body).model == "m"
