"""Admissions queued on the shared Redis connection go as one script call per org
(redis_admits), on a real valkey: the same decisions as one call each, in fewer calls."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from appliance.limits.ports import (
    AdmitRequest,
    BucketSpec,
    LimiterBackendError,
    SlotSpec,
    SpendCheck,
    Verdict,
)
from appliance.limits.redis_mux import _Link
from appliance.limits.redis_store import RedisAdmissionStore
from tests.services import RedisServer

SLOW = 0.001  # tokens per second: nothing refills during a test
MONTH = "2099-01"


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        yield redis
    finally:
        await redis.aclose()


@pytest.fixture
async def store(client: aioredis.Redis) -> AsyncIterator[RedisAdmissionStore]:
    subject = RedisAdmissionStore(client, timeout_s=5.0, multiplex=True)
    await subject.open()
    try:
        yield subject
    finally:
        await subject.aclose()


def rpm(capacity: float, cost: float = 1) -> BucketSpec:
    return BucketSpec("rpm", capacity, SLOW, cost)


async def evalsha_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_queued_admissions_of_one_org_decide_as_one_call_each(
    store: RedisAdmissionStore, client: aioredis.Redis
) -> None:
    """60 admissions at once against a bucket of 25: exactly 25 pass, with the tokens each
    saw going down one by one, in fewer script calls than admissions."""
    org = f"o-{uuid.uuid4().hex[:8]}"
    await store.admit(AdmitRequest(org, "warm", (rpm(25, cost=0),)))  # opens the connection
    await client.config_resetstat()
    verdicts = await asyncio.gather(
        *(store.admit(AdmitRequest(org, f"r{n}", (rpm(25),))) for n in range(60))
    )
    admitted = [v for v in verdicts if not v.refused]
    assert len(admitted) == 25
    assert sorted(v.buckets.readings[0].remaining for v in admitted) == pytest.approx(
        list(range(25)), abs=1e-3
    )
    assert await evalsha_calls(client) < 60


async def test_each_org_has_its_own_call_and_its_own_errors(
    store: RedisAdmissionStore, client: aioredis.Redis
) -> None:
    """An org whose bucket key holds the wrong type gets an error for each of its requests;
    another org's requests queued in the same turn are decided as usual."""
    broken, fine = f"b-{uuid.uuid4().hex[:8]}", f"f-{uuid.uuid4().hex[:8]}"
    await store.admit(AdmitRequest(fine, "warm", (rpm(5, cost=0),)))
    await client.set(store.bucket_key(broken, "rpm"), "not a hash")

    async def admit(org: str, n: int) -> Verdict | LimiterBackendError:
        try:
            return await store.admit(AdmitRequest(org, f"r{n}", (rpm(5),)))
        except LimiterBackendError as exc:
            return exc

    results = await asyncio.gather(*(admit(org, n) for n in range(8) for org in (broken, fine)))
    errors, decided = results[0::2], results[1::2]
    assert all(isinstance(r, LimiterBackendError) and r.org == broken for r in errors)
    assert all(isinstance(r, Verdict) for r in decided)
    assert sum(1 for r in decided if isinstance(r, Verdict) and not r.refused) == 5


async def test_a_call_mixes_requests_with_and_without_budget_and_slots(
    store: RedisAdmissionStore,
) -> None:
    """Each admission in one call reads its own keys: budgets, slots and buckets line up."""
    org = f"m-{uuid.uuid4().hex[:8]}"
    await store.admit(AdmitRequest(org, "warm", (rpm(100, cost=0),)))
    slot = (SlotSpec("cc", 2),)
    # The first goes alone on the idle connection; the other four queue behind it, together.
    requests = [
        AdmitRequest(org, "e", (rpm(100),)),
        AdmitRequest(org, "a", (rpm(100),), budget=SpendCheck(MONTH, 10.0)),
        AdmitRequest(org, "b", (rpm(100),), slots=slot),
        AdmitRequest(org, "c", (rpm(100),), (BucketSpec("shadow", 1, SLOW, 5),), slot),
        AdmitRequest(org, "d", (rpm(100),), slots=slot, budget=SpendCheck(MONTH, 1e9, False)),
    ]
    e, a, b, c, d = await asyncio.gather(*(store.admit(r) for r in requests))
    assert [v.refused for v in (a, b, c, e)] == ["", "", "", ""]
    assert d.refused == "concurrency"  # its slot set was full: b and c hold both
    assert (b.slots, c.slots, d.slots) == ((True,), (True,), (False,))
    assert c.shadow == (True,)  # a full bucket admits any cost
    assert a.spent_usd == d.spent_usd == 0.0
    remaining = sorted(v.buckets.readings[0].remaining for v in (a, b, c, e))
    assert remaining == pytest.approx([96, 97, 98, 99], abs=1e-3)  # d charged nothing


async def test_an_idle_connection_sends_an_admission_at_once(
    store: RedisAdmissionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alone on the connection, an admission is written in the call itself (not on a later
    turn of the loop), as the one-request `admit` mode."""
    org = f"i-{uuid.uuid4().hex[:8]}"
    await store.admit(AdmitRequest(org, "warm", (rpm(5, cost=0),)))
    written: list[bytes] = []
    real_send = _Link.send

    def send(link: _Link, packed: bytes, count: int, deadline: float) -> list[object]:
        written.append(packed)
        return real_send(link, packed, count, deadline)  # type: ignore[return-value]

    monkeypatch.setattr(_Link, "send", send)
    pending = asyncio.ensure_future(store.admit(AdmitRequest(org, "r", (rpm(5),))))
    await asyncio.sleep(0)  # the task runs up to its await: the command is written by then
    assert len(written) == 1
    assert b"admit" in written[0]
    assert b"admits" not in written[0]
    assert not (await pending).refused


async def test_a_caller_cancelled_while_queued_is_never_charged(
    store: RedisAdmissionStore,
) -> None:
    """An admission cancelled before its turn's call leaves is not in it: its tokens stay."""
    org = f"c-{uuid.uuid4().hex[:8]}"
    await store.admit(AdmitRequest(org, "warm", (rpm(10, cost=0),)))
    first = asyncio.ensure_future(store.admit(AdmitRequest(org, "first", (rpm(10),))))
    await asyncio.sleep(0)  # sent alone: the connection is busy from now on
    queued = [
        asyncio.ensure_future(store.admit(AdmitRequest(org, f"q{n}", (rpm(10),)))) for n in range(3)
    ]
    await asyncio.sleep(0)  # each is queued for this turn's call
    queued[1].cancel()
    verdicts = await asyncio.gather(first, queued[0], queued[2])
    assert [v.refused for v in verdicts] == ["", "", ""]
    probe = await store.admit(AdmitRequest(org, "probe", (rpm(10, cost=0),)))
    assert probe.buckets.readings[0].remaining == pytest.approx(7, abs=1e-3)  # not 6
