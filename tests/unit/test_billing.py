"""The billing rule (`usage.record.bill`): one table row per way a request can end (pure)."""

from __future__ import annotations

import dataclasses

import pytest

from appliance.usage.record import Bill, RequestFacts, bill, build_record

PRICES = (0.5, 1.5)  # USD per 1k input / output tokens

NONE = Bill("none", 0, 0, billable=False, partial=False)


def ended(**changes: object) -> RequestFacts:
    """A JSON request the backend answered 200 without usage; the router's estimate 90 + 40."""
    facts = RequestFacts(
        id="r",
        started_at=1.0,
        first_byte_at=1.2,
        ended_at=2.0,
        org="acme",
        backend="gpu-a",
        attempts=1,
        status=200,
        estimate_prompt_tokens=90,
        estimate_completion_tokens=40,
    )
    return dataclasses.replace(facts, **changes)  # type: ignore[arg-type]


def streamed(**changes: object) -> RequestFacts:
    """A stream that relayed 12 content events (so 12 completion tokens estimated)."""
    defaults: dict[str, object] = {"events_relayed": 12, "estimate_completion_tokens": 12}
    return ended(stream=True, **{**defaults, **changes})


REPORTED = {"prompt_tokens": 7, "completion_tokens": 30}
WHOLE_REPORTED = Bill("reported", 7, 30, billable=True, partial=False)
PART_REPORTED = Bill("reported", 7, 30, billable=True, partial=True)
WHOLE_ESTIMATED = Bill("estimated", 90, 40, billable=True, partial=False)
STREAM_ESTIMATED = Bill("estimated", 90, 12, billable=True, partial=False)
PART_ESTIMATED = Bill("estimated", 90, 12, billable=True, partial=True)

TABLE = [
    # Refused or never answered: nothing is charged, whatever the estimate.
    ("refused by a limit", ended(backend=None, status=429, error_code="rate_limit_exceeded"), NONE),
    ("unknown model", ended(backend=None, status=404, error_code="model_not_found"), NONE),
    ("every attempt failed (502)", ended(status=502, error_code="upstream_error"), NONE),
    ("backend timed out (504)", ended(status=504, error_code="upstream_timeout"), NONE),
    ("backend's own 400 relayed", ended(status=400, error_code="http_400"), NONE),
    ("backend's 400 with usage", ended(status=400, error_code="http_400", **REPORTED), NONE),
    ("backend's 429 passed on", ended(status=429, error_code="upstream_rate_limited"), NONE),
    ("invalid answer (502)", ended(status=502, error_code="upstream_invalid_response"), NONE),
    ("stream failed before its start", streamed(status=502, error_code="upstream_error"), NONE),
    ("client left before an answer", ended(status=0, client_disconnected=True), NONE),
    # Complete successes: reported usage, else the estimate.
    ("JSON with usage", ended(**REPORTED), WHOLE_REPORTED),
    ("JSON without usage", ended(), WHOLE_ESTIMATED),
    ("JSON sent whole, client left", ended(client_disconnected=True, **REPORTED), WHOLE_REPORTED),
    ("stream with usage", streamed(**REPORTED), WHOLE_REPORTED),
    ("stream without usage", streamed(), STREAM_ESTIMATED),
    # Streams cut after content: what was relayed, marked partial.
    ("stream broken after content", streamed(error_code="upstream_stream_broken"), PART_ESTIMATED),
    ("stream stalled", streamed(error_code="upstream_stream_idle_timeout"), PART_ESTIMATED),
    ("invalid event mid-stream", streamed(error_code="upstream_invalid_response"), PART_ESTIMATED),
    ("client left mid-stream", streamed(client_disconnected=True), PART_ESTIMATED),
    ("client left after usage", streamed(client_disconnected=True, **REPORTED), PART_REPORTED),
    # Streams cut before any content: nothing reached the client, nothing is charged.
    (
        "stream broken at once",
        streamed(error_code="upstream_stream_broken", events_relayed=0),
        NONE,
    ),
    ("client left before content", streamed(client_disconnected=True, events_relayed=0), NONE),
]


@pytest.mark.parametrize(("facts", "expected"), [t[1:] for t in TABLE], ids=[t[0] for t in TABLE])
def test_every_outcome_is_billed_by_the_rule(facts: RequestFacts, expected: Bill) -> None:
    """Each way a request ends gets the bill the rule in docs/usage-records.md gives it."""
    assert bill(facts) == expected


@pytest.mark.parametrize(("facts", "expected"), [t[1:] for t in TABLE], ids=[t[0] for t in TABLE])
def test_the_record_carries_the_bill(facts: RequestFacts, expected: Bill) -> None:
    """The usage record's tokens, cost, billable and partial are the bill's, never another count."""
    record = build_record(facts, PRICES)
    assert (record.token_source, record.prompt_tokens, record.completion_tokens) == (
        expected.token_source,
        expected.prompt_tokens,
        expected.completion_tokens,
    )
    assert (record.billable, record.partial) == (expected.billable, expected.partial)
    assert record.cost_usd == expected.cost_usd(PRICES)
    if not expected.billable:
        assert record.cost_usd == 0.0
    assert record.status == facts.status
    assert record.error_code == facts.error_code
