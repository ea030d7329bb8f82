"""The Settler: settlements queued by finished requests, sent in batches by one task."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from appliance.limits.ports import AdmitRequest, LimiterBackendError, Settlement, Verdict
from appliance.limits.settler import Settler


class Observer:
    """The LimitObserver calls a settler makes."""

    def __init__(self) -> None:
        self.errors = 0
        self.totals: dict[str, float] = {}

    def backend_error(self) -> None:
        self.errors += 1

    def spent(self, org: str, total_usd: float) -> None:
        self.totals[org] = total_usd

    def denied(self, org: str, scope: str, limit: str, shadow: bool) -> None: ...
    def budget_denied(self, org: str, shadow: bool) -> None: ...
    def degraded(self, on: bool) -> None: ...
    def decision(self, seconds: float) -> None: ...


class Store:
    """Records every settle call; can fail the next ones or hold them until released."""

    def __init__(self) -> None:
        self.calls: list[list[Settlement]] = []
        self.failures: list[BaseException] = []
        self.gate: asyncio.Event | None = None

    async def admit(self, request: AdmitRequest) -> Verdict:
        raise NotImplementedError

    async def settle(self, batch: Sequence[Settlement]) -> dict[str, float]:
        if self.gate is not None:
            await self.gate.wait()
        self.calls.append(list(batch))
        if self.failures:
            raise self.failures.pop(0)
        return {item.org: sum(i.usd for i in batch if i.org == item.org) for item in batch}

    async def ping(self) -> None: ...


def item(n: int, org: str = "acme") -> Settlement:
    return Settlement(org, f"r{n}", usd=1.0)


@pytest.fixture
def observer() -> Observer:
    return Observer()


@pytest.fixture
async def settler(observer: Observer) -> AsyncIterator[Settler]:
    settler = Settler(observer, max_batch=100)
    settler.start()
    yield settler
    await settler.close()


async def settled(settler: Settler) -> None:
    """Wait (bounded) until nothing is queued or being sent."""
    idle = settler.idle()
    if idle is not None:
        await asyncio.wait_for(idle, 2)


async def test_settlements_queued_together_go_out_in_one_call(
    settler: Settler, observer: Observer
) -> None:
    """Fifty settlements queued before the sender runs reach the store in one call, and each
    org's total reaches the observer."""
    store = Store()
    for n in range(50):
        settler.submit(store, item(n, org="a" if n % 2 else "b"))
    await settled(settler)
    assert [len(call) for call in store.calls] == [50]
    assert observer.totals == {"a": 25.0, "b": 25.0}


async def test_a_lone_settlement_is_sent_at_once(settler: Settler) -> None:
    """One settlement is sent on the next turns of the loop, without waiting for company."""
    store = Store()
    settler.submit(store, item(1))
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(store.calls) == 1


async def test_batches_grow_while_one_is_on_the_wire(settler: Settler) -> None:
    """Settlements queued while a call is in flight go out together in the next call, and a
    batch never exceeds max_batch."""
    store = Store()
    store.gate = asyncio.Event()
    settler.submit(store, item(0))
    await asyncio.sleep(0)
    for n in range(1, 251):
        settler.submit(store, item(n))
    store.gate.set()
    await settled(settler)
    assert [len(call) for call in store.calls] == [1, 100, 100, 50]


async def test_each_store_gets_its_own_settlements(settler: Settler) -> None:
    """Settlements for two stores (Redis and the in-process fallback) go to their own."""
    first, second = Store(), Store()
    settler.submit(first, item(1))
    settler.submit(second, item(2))
    settler.submit(first, item(3))
    await settled(settler)
    assert [[s.holder for s in call] for call in first.calls] == [["r1", "r3"]]
    assert [[s.holder for s in call] for call in second.calls] == [["r2"]]


async def test_a_failed_batch_is_counted_and_the_next_one_goes_out(
    settler: Settler, observer: Observer
) -> None:
    """A store error is counted (router_limiter_backend_errors_total), not retried, and the
    settler keeps sending; so does it after a bug (any other exception) in a store."""
    store = Store()
    store.failures = [LimiterBackendError("redis settle failed"), RuntimeError("a bug")]
    for n in range(3):
        settler.submit(store, item(n))
        await settled(settler)
    assert [[s.holder for s in call] for call in store.calls] == [["r0"], ["r1"], ["r2"]]
    assert observer.errors == 1
    assert observer.totals == {"acme": 1.0}


async def test_close_sends_everything_queued(observer: Observer) -> None:
    """Closing sends what is queued (whether or not the task ever ran); later submissions
    are dropped, not left waiting."""
    for started in (True, False):
        settler, store = Settler(observer), Store()
        if started:
            settler.start()
        for n in range(10):
            settler.submit(store, item(n))
        await settler.close()
        settler.submit(store, item(99))
        assert [len(call) for call in store.calls] == [10]
        assert settler.idle() is None


async def test_idle_is_none_when_nothing_is_pending(settler: Settler) -> None:
    """idle() is None with nothing to send, else a future done once all is sent."""
    assert settler.idle() is None
    store = Store()
    settler.submit(store, item(1))
    idle = settler.idle()
    assert idle is not None
    await asyncio.wait_for(idle, 2)
    assert store.calls
    assert settler.idle() is None
