"""Limit policy: bucket specs, token estimates, OpenAI-style headers."""

from __future__ import annotations

import pytest

from appliance.limits.policy import (
    Limit,
    bucket_spec,
    estimate_tokens,
    format_duration,
    oversized,
    rate_headers,
)
from appliance.limits.ports import BucketReading
from appliance.upstream.payload import Endpoint, prompt_fields


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0ms"), (6e-7, "1ms"), (0.12, "120ms"), (1, "1s"), (59.2, "1m0s"), (61, "1m1s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    """Durations read like OpenAI's reset headers, rounded up."""
    assert format_duration(seconds) == text


def test_bucket_spec_is_one_minute_of_the_limit() -> None:
    """A per-minute limit is a bucket holding a minute's worth, refilled evenly; shares scale it."""
    rpm = Limit("org", "acme", "rpm", 600, shadow=False)
    assert bucket_spec(rpm, 100) == bucket_spec(rpm, 5)  # requests cost 1 whatever the tokens
    spec = bucket_spec(rpm, 100)
    assert (spec.capacity, spec.refill_per_s, spec.cost) == (600, 10, 1)
    tpm = Limit("key", "k", "tpm", 6000, shadow=False)
    assert bucket_spec(tpm, 100, share=0.5).capacity == 3000
    assert bucket_spec(tpm, 100).cost == 100


def test_oversized_names_the_enforced_tpm_limit_an_estimate_exceeds() -> None:
    """Only an enforced tpm limit below the estimate refuses it; rpm and shadow limits never do."""
    rpm = Limit("org", "acme", "rpm", 10, shadow=False)
    shadow = Limit("org", "acme", "tpm", 50, shadow=True)
    org = Limit("org", "acme", "tpm", 1000, shadow=False)
    key = Limit("key", "k", "tpm", 200, shadow=False)
    limits = (rpm, shadow, org, key)
    assert oversized(limits, 200) is None  # exactly the limit still fits a full bucket
    assert oversized(limits, 201) == key
    assert oversized(limits, 5000) == org  # the first one in policy order: org before key
    assert oversized((rpm, shadow), 10**12) is None


def test_estimate_counts_text_and_max_tokens() -> None:
    """The estimate is characters / 4 of every text field plus the completion allowance."""
    payload = {
        "messages": [{"role": "user", "content": "x" * 40}, {"content": [{"text": "y" * 8}]}]
    }
    assert estimate_tokens(payload, 50, 1024) == 12 + 50
    assert estimate_tokens({"prompt": ""}, None, 1024) == 1 + 1024


def test_estimate_counts_the_fields_named() -> None:
    """With the Responses API's fields, `instructions` counts as prompt text too."""
    payload = {
        "input": [{"role": "user", "content": [{"text": "x" * 40}]}],
        "instructions": "y" * 8,
    }
    assert estimate_tokens(payload, 5, 1024) == 10 + 5
    assert estimate_tokens(payload, 5, 1024, prompt_fields(Endpoint.RESPONSES)) == 12 + 5


def test_headers_report_the_tightest_bucket() -> None:
    """Of key and org buckets, the one with the least room left speaks for the request."""
    limits = (
        Limit("org", "acme", "rpm", 100, False),
        Limit("key", "k", "rpm", 10, False),
        Limit("org", "acme", "tpm", 1000, False),
    )
    readings = (
        BucketReading("org:acme:rpm", 100, 90, 6, 0),
        BucketReading("key:k:rpm", 10, 2, 48, 0),
        BucketReading("org:acme:tpm", 1000, 500.7, 30, 0),
    )
    assert rate_headers(limits, readings) == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "48s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "500",
        "x-ratelimit-reset-tokens": "30s",
    }
