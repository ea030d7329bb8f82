"""Building, encoding and decoding usage records (pure)."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

from appliance.usage.record import (
    RequestFacts,
    UsageRecord,
    build_record,
    decode_record,
    encode_record,
)

PRICES = (0.5, 1.5)  # USD per 1k input / output tokens


def served(**changes: object) -> RequestFacts:
    """Facts of a request a backend answered, without reported usage unless changed."""
    facts = RequestFacts(
        id="req-1",
        started_at=1_000.0,
        first_byte_at=1_000.25,
        ended_at=1_001.5,
        org="acme",
        key_id="k1",
        model="gpt-x",
        backend="gpu-a",
        upstream_model="llama-70b",
        decision="WEIGHTED",
        attempts=1,
        status=200,
        stream=True,
        estimate_prompt_tokens=90,
        estimate_completion_tokens=40,
    )
    return dataclasses.replace(facts, **changes)  # type: ignore[arg-type]


def test_reported_usage_is_billed_and_timings_derived() -> None:
    """Backend-reported tokens win over estimates; cost, latency and ttft are derived."""
    record = build_record(served(prompt_tokens=100, completion_tokens=20), PRICES)
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (100, 20, 120)
    assert record.token_source == "reported"
    assert record.cost_usd == pytest.approx(100 * 0.5 / 1000 + 20 * 1.5 / 1000)
    assert record.latency_ms == pytest.approx(1500.0)
    assert record.ttft_ms == pytest.approx(250.0)
    assert record.schema_version == 1
    assert (record.id, record.org, record.backend, record.decision) == (
        "req-1",
        "acme",
        "gpu-a",
        "WEIGHTED",
    )


def test_a_lone_reported_number_is_completed_from_the_estimate() -> None:
    """A backend reporting only prompt tokens still counts as reported, completion estimated."""
    record = build_record(served(prompt_tokens=100), PRICES)
    assert (record.token_source, record.prompt_tokens, record.completion_tokens) == (
        "reported",
        100,
        40,
    )


def test_unreported_usage_of_an_answered_request_is_estimated() -> None:
    """A backend that answered without usage (or a client that left mid-stream) is estimated."""
    record = build_record(served(client_disconnected=True, events_relayed=40), PRICES)
    assert record.token_source == "estimated"
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (90, 40, 130)
    assert record.cost_usd == pytest.approx(90 * 0.5 / 1000 + 40 * 1.5 / 1000)
    assert record.client_disconnected


def test_a_request_refused_before_any_backend_bills_nothing() -> None:
    """A request refused by auth or limits has token_source none, zero tokens and zero cost."""
    facts = RequestFacts(
        id="req-2",
        started_at=5.0,
        ended_at=5.001,
        status=429,
        error_code="rate_limit_exceeded",
        estimate_prompt_tokens=50,
    )
    record = build_record(facts, PRICES)
    assert record.token_source == "none"
    assert (record.prompt_tokens, record.completion_tokens, record.cost_usd) == (0, 0, 0.0)
    assert record.ttft_ms is None
    assert record.first_byte_at is None
    assert record.backend is None
    assert record.latency_ms == pytest.approx(1.0)


def test_a_backend_that_never_answered_bills_nothing() -> None:
    """A request whose backends all failed before a first byte is not billed."""
    record = build_record(served(first_byte_at=None, status=502, attempts=2), PRICES)
    assert (record.token_source, record.total_tokens, record.cost_usd) == ("none", 0, 0.0)


def test_missing_end_time_falls_back_and_negative_numbers_are_clamped() -> None:
    """Without ended_at the last known time is used; negative counts and clocks give zero."""
    record = build_record(
        served(ended_at=None, prompt_tokens=-3, completion_tokens=-1, first_byte_at=999.0), PRICES
    )
    assert record.ended_at == 999.0
    assert (record.latency_ms, record.ttft_ms) == (0.0, 0.0)
    assert (record.prompt_tokens, record.completion_tokens, record.cost_usd) == (0, 0, 0.0)


def test_cost_carries_no_float_noise() -> None:
    """Cost is rounded so that simple prices give exact-looking sums."""
    record = build_record(served(prompt_tokens=1, completion_tokens=2), (0.1, 0.1))
    assert record.cost_usd == 0.0003


def test_encoding_round_trips_and_keeps_schema_order() -> None:
    """A record encodes to compact JSON with schema_version first and decodes back equal."""
    record = build_record(served(prompt_tokens=1, completion_tokens=2), PRICES)
    payload = encode_record(record)
    assert payload.startswith(b'{"schema_version":1,"id":"req-1",')
    assert decode_record(payload) == record
    assert list(msgspec.json.decode(payload)) == list(UsageRecord.__struct_fields__)


def test_records_are_frozen() -> None:
    """A built record cannot be changed after the fact."""
    record = build_record(served(), PRICES)
    with pytest.raises(AttributeError):
        record.cost_usd = 0.0  # type: ignore[misc]


def test_decoding_rejects_what_is_not_a_record() -> None:
    """A payload missing required fields fails validation instead of yielding a half record."""
    with pytest.raises(msgspec.ValidationError):
        decode_record(b'{"id":"x"}')
