"""The limiter over in-process stores: one decision per request, one settlement per request."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

import pytest

from appliance.audit.events import AuditEvent
from appliance.errors import (
    BudgetExceeded,
    ConcurrencyLimitExceeded,
    LimiterUnavailable,
    RateLimitExceeded,
)
from appliance.limits.limiter import Limiter, LimiterStores, Permit
from appliance.limits.memory_store import MemoryAdmissionStore
from appliance.limits.policy import Limit, LimitPolicy
from appliance.limits.ports import (
    AdmitRequest,
    BudgetStatus,
    LimiterBackendError,
    Settlement,
    Verdict,
)
from appliance.limits.settler import Settler
from tests.unit.test_settler import Observer

PRICES = (1.0, 2.0)  # USD per 1k tokens


class Recording(MemoryAdmissionStore):
    """The in-process store, remembering what it was asked."""

    def __init__(self) -> None:
        super().__init__()
        self.admitted: list[AdmitRequest] = []
        self.settled: list[list[Settlement]] = []

    async def admit(self, request: AdmitRequest) -> Verdict:
        self.admitted.append(request)
        return await super().admit(request)

    async def settle(self, batch: Sequence[Settlement]) -> dict[str, float]:
        self.settled.append(list(batch))
        return await super().settle(batch)


class Down(Recording):
    """A shared store whose Redis does not answer."""

    async def admit(self, request: AdmitRequest) -> Verdict:
        raise LimiterBackendError(f"redis admit for {request.org} failed: ConnectionError")


def policy(*limits: Limit) -> LimitPolicy:
    rates = tuple(lim for lim in limits if lim.name != "max_concurrent")
    slots = tuple(lim for lim in limits if lim.name == "max_concurrent")
    return LimitPolicy("acme", "k1", rates, slots, budget_usd=0.0, budget_shadow=False)


FULL = policy(
    Limit("org", "acme", "rpm", 100, shadow=False),
    Limit("org", "acme", "tpm", 10_000, shadow=False),
    Limit("org", "acme", "max_concurrent", 2, shadow=False),
)


class Authority:
    """An external budget service answering a fixed status, or failing."""

    def __init__(self, spent: float | None) -> None:
        self.spent = spent

    async def status(self, org: str) -> BudgetStatus:
        if self.spent is None:
            raise LimiterBackendError(f"budget service for org {org!r}: HTTP status 503")
        return BudgetStatus(limit_usd=10.0, spent_usd=self.spent, period_end=0.0)


def limiter(
    local: MemoryAdmissionStore,
    shared: MemoryAdmissionStore | None = None,
    *,
    fail_open: bool = True,
    replicas: int = 1,
    authority: Authority | None = None,
) -> tuple[Limiter, Settler, list[AuditEvent]]:
    events: list[AuditEvent] = []
    settler = Settler(Observer())
    built = Limiter(
        stores=LimiterStores(local=local, shared=shared),
        authority=authority,
        settler=settler,
        fail_open=fail_open,
        expected_replicas=replicas,
        observer=Observer(),
        audit=events.append,
        wall=lambda: 1_800_000_000.0,  # 2027-01-15
        monotonic=asyncio.get_running_loop().time,
    )
    return built, settler, events


async def finish(settler: Settler) -> None:
    settler.start()
    await settler.close()


async def test_a_finished_request_is_one_settlement_with_its_bill_and_slots() -> None:
    """Settled at the last byte, released at the end: one settlement carries the token
    true-up, the spend and the slot release; a second settle changes nothing."""
    store = Recording()
    lim, settler, _ = limiter(store)
    permit = await lim.admit(FULL, 100, "req-1")
    lim.settle(permit, 10, 20, PRICES)
    lim.settle(permit, 99, 99, PRICES)
    assert settler.idle() is None  # parked until the release
    lim.release(permit)
    await finish(settler)
    [[settlement]] = store.settled
    assert settlement.releases == ("org:acme:max_concurrent",)
    assert [a.delta for a in settlement.adjusts] == [70.0]  # 100 reserved, 30 used
    assert settlement.usd == pytest.approx(0.05)
    assert settlement.period == "2027-01"


async def test_release_before_the_bill_still_settles_both_in_one_batch() -> None:
    """A client gone before its bill: the slots go back at once, the bill follows in the
    same turn of the loop, and both reach the store in one call."""
    store = Recording()
    lim, settler, _ = limiter(store)
    permit = await lim.admit(FULL, 100, "req-1")
    lim.release(permit)
    lim.settle(permit, 0, 0, PRICES)
    lim.release(permit)
    await finish(settler)
    [batch] = store.settled
    assert [(s.releases, len(s.adjusts)) for s in batch] == [
        (("org:acme:max_concurrent",), 0),
        ((), 1),
    ]


async def test_holders_are_unique_even_when_clients_reuse_a_request_id() -> None:
    """Two requests with the same x-request-id hold two slots, so a client cannot pass a
    concurrency limit by repeating its request id."""
    store = Recording()
    lim, _, events = limiter(store)
    await lim.admit(FULL, 10, "same")
    await lim.admit(FULL, 10, "same")
    with pytest.raises(ConcurrencyLimitExceeded):
        await lim.admit(FULL, 10, "same")
    assert len({request.holder for request in store.admitted}) == 3
    assert [e.subject for e in events] == ["org:acme:max_concurrent"]


async def test_one_admission_is_one_store_call_for_every_limit() -> None:
    """rpm, tpm and the concurrency slot are decided in a single call to the store."""
    store = Recording()
    lim, _, _ = limiter(store)
    await lim.admit(FULL, 10, "r")
    [request] = store.admitted
    assert [b.key for b in request.buckets] == ["org:acme:rpm", "org:acme:tpm"]
    assert [s.key for s in request.slots] == ["org:acme:max_concurrent"]


async def test_concurrency_refusal_charges_no_bucket() -> None:
    """A request refused for lack of a slot costs no request or token from the buckets."""
    store = Recording()
    lim, settler, _ = limiter(store)
    held = [await lim.admit(FULL, 10, f"r{n}") for n in range(2)]
    with pytest.raises(ConcurrencyLimitExceeded):
        await lim.admit(FULL, 10, "r2")
    lim.release(held[0])
    await finish(settler)
    permit: Permit = await lim.admit(FULL, 10, "r3")
    assert permit.headers["x-ratelimit-remaining-requests"] == "97"  # 100 - 3 admitted


async def test_shared_store_down_open_mode_uses_this_replicas_share() -> None:
    """With Redis down and `open`, requests are admitted in-process against limit /
    expected_replicas, and the spend of such a request is still sent to the shared store."""
    local, shared = Recording(), Down()
    tight = policy(Limit("org", "acme", "rpm", 4, shadow=False))
    lim, settler, _ = limiter(local, shared, replicas=2)
    permits = [await lim.admit(tight, 1, f"r{n}") for n in range(2)]
    with pytest.raises(RateLimitExceeded):
        await lim.admit(tight, 1, "r2")
    assert lim.degraded
    lim.settle(permits[0], 1, 0, PRICES)
    await finish(settler)
    assert [[s.usd for s in batch] for batch in shared.settled] == [[0.001]]
    assert local.settled == []  # nothing to give back: the estimate was exact


async def test_shared_store_down_closed_mode_refuses() -> None:
    """With Redis down and `closed`, the request gets LimiterUnavailable (503)."""
    lim, _, _ = limiter(Recording(), Down(), fail_open=False)
    with pytest.raises(LimiterUnavailable):
        await lim.admit(FULL, 10, "r")
    with pytest.raises(LimiterUnavailable):  # still within the pause: no second try
        await lim.admit(FULL, 10, "r")


class OneOrgDown(Recording):
    """A shared store that cannot reach one org's keys (its cluster slot is moving)."""

    async def admit(self, request: AdmitRequest) -> Verdict:
        if request.org == "moving":
            message = "redis admit failed for org moving: TryAgainError"
            raise LimiterBackendError(message, org="moving")
        return await super().admit(request)


async def test_one_org_unreachable_pauses_that_org_only() -> None:
    """When only one org's keys fail, that org gets the failure mode for the pause and every
    other org is still decided by the shared store; the limiter is not degraded."""
    shared = OneOrgDown()
    lim, _, _ = limiter(Recording(), shared, fail_open=False)
    moving = replace(FULL, org="moving")
    with pytest.raises(LimiterUnavailable):
        await lim.admit(moving, 10, "r1")
    with pytest.raises(LimiterUnavailable):  # within the pause: not asked again
        await lim.admit(moving, 10, "r2")
    await lim.admit(FULL, 10, "r3")
    assert [r.org for r in shared.admitted] == ["acme"]
    assert not lim.degraded


async def test_an_external_budget_authority_decides_the_budget() -> None:
    """With a budget service the org's budget is its answer (the store is not asked for
    spend); an exhausted budget is refused and audited; a failing service follows the
    failure mode."""
    budgeted = LimitPolicy("acme", "k1", (), (), budget_usd=5.0, budget_shadow=False)
    store = Recording()
    lim, _, events = limiter(store, authority=Authority(spent=9.0))
    await lim.admit(budgeted, 10, "r1")
    assert store.admitted == []  # no rate or slot limits, and the budget is the service's
    lim, _, events = limiter(store, authority=Authority(spent=10.0))
    with pytest.raises(BudgetExceeded, match=r"\$10\.00"):
        await lim.admit(budgeted, 10, "r2")
    assert [(e.kind, e.subject) for e in events] == [("limit.deny", "monthly_budget_usd")]
    lim, _, _ = limiter(store, authority=Authority(spent=None))
    await lim.admit(budgeted, 10, "r3")  # open: admitted without a budget check
    lim, _, _ = limiter(store, authority=Authority(spent=None), fail_open=False)
    with pytest.raises(LimiterUnavailable):
        await lim.admit(budgeted, 10, "r4")
