"""The limiter: admit a request against its rate, concurrency and budget limits, then settle.

On the way in: one bucket round trip for every enforced rate limit together, a slot per
concurrency limit, and a budget check that is usually served from memory. On the way out,
off the response path: the token estimate is settled against real usage, the cost is
added to the org's month, slots are released. Shadow limits are evaluated in the
background, metered and logged as would-deny, never enforced.

While the shared store fails, `open` admits against in-process buckets holding this
replica's share of each limit, and `closed` answers 503; the store is retried after a
short pause, so a dead Redis costs at most one short timeout per pause, not per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from appliance.audit.events import AuditEvent
from appliance.errors import (
    BudgetExceeded,
    ConcurrencyLimitExceeded,
    LimiterUnavailable,
    RateLimitExceeded,
    RequestExceedsLimit,
)
from appliance.limits.budget import cost_usd
from appliance.limits.budget_gate import BudgetGate
from appliance.limits.policy import Limit, LimitPolicy, bucket_spec, oversized, rate_headers
from appliance.limits.ports import (
    Admission,
    BucketStore,
    ConcurrencyStore,
    LimiterBackendError,
    LimitObserver,
)
from appliance.telemetry.logging import get_logger

_RETRY_STORE_AFTER_S = 1.0
_log = get_logger("routerctl.limits")

Spawn = Callable[[Coroutine[Any, Any, None]], None]
Audit = Callable[[AuditEvent], None]


@dataclass(slots=True)
class Permit:
    """What one admitted request holds until it ends."""

    policy: LimitPolicy
    estimate: int
    headers: dict[str, str]
    store: BucketStore | None = None  # where the token buckets were charged
    slots: list[tuple[ConcurrencyStore, str]] = field(default_factory=list)
    request_id: str = ""
    settled: bool = False  # the reservation is settled once, however the request ended


@dataclass(frozen=True, slots=True)
class LimiterStores:
    buckets: BucketStore
    concurrency: ConcurrencyStore
    local_buckets: BucketStore  # in-process fallback (or the only store when embedded)
    local_concurrency: ConcurrencyStore
    shared: bool  # True when `buckets`/`concurrency` are Redis


class Limiter:
    def __init__(
        self,
        *,
        stores: LimiterStores,
        budgets: BudgetGate,
        fail_open: bool,
        expected_replicas: int,
        observer: LimitObserver,
        audit: Audit,
        spawn: Spawn,
        wall: Callable[[], float],
        monotonic: Callable[[], float],
    ) -> None:
        self._s = stores
        self._budgets = budgets
        self._fail_open = fail_open
        self._share = 1.0 / expected_replicas
        self._observer = observer
        self._audit = audit
        self._spawn = spawn
        self._wall = wall
        self._monotonic = monotonic
        self._store_down_until = 0.0
        self._reported_degraded = False

    @property
    def degraded(self) -> bool:
        return self._s.shared and self._monotonic() < self._store_down_until

    async def admit(self, policy: LimitPolicy, estimate: int, request_id: str) -> Permit:
        """Admit or raise RateLimitExceeded / ConcurrencyLimitExceeded / BudgetExceeded."""
        started = self._monotonic()
        too_big = oversized(policy.rates, estimate)
        if too_big is not None:
            raise RequestExceedsLimit(
                f"This request needs an estimated {estimate} tokens (its input plus max_tokens), "
                f"more than the tokens-per-minute limit of {too_big.scope} '{too_big.owner}' "
                f"({too_big.value}). Lower max_tokens or shorten the input.",
                param="max_tokens",
            )
        permit = Permit(policy, estimate, {}, request_id=request_id)
        await self._check_budget(policy, request_id)
        enforced = tuple(lim for lim in policy.rates if not lim.shadow)
        if enforced:
            admission, permit.store = await self._take(enforced, estimate)
            permit.headers = rate_headers(enforced, admission.readings)
            if not admission.admitted:
                self._deny_rate(policy, enforced, admission, request_id, permit.headers)
        shadow = tuple(lim for lim in policy.rates if lim.shadow)
        if shadow:
            self._spawn(self._evaluate_shadow(policy, shadow, estimate, request_id))
        try:
            await self._acquire_slots(permit)
        except BaseException:
            self.release(permit)
            raise
        self._observer.decision(self._monotonic() - started)
        return permit

    def settle(
        self, permit: Permit, prompt: int, completion: int, prices: tuple[float, float]
    ) -> None:
        """After the response: true up tokens and record spend, in the background; once per
        permit (0 tokens gives the whole reservation back)."""
        if permit.settled:
            return
        permit.settled = True
        self._spawn(self._settle(permit, prompt, completion, prices))

    def release(self, permit: Permit) -> None:
        slots, permit.slots = permit.slots, []
        for store, key in slots:
            self._spawn(self._release(store, key, permit.request_id))

    async def _check_budget(self, policy: LimitPolicy, request_id: str) -> None:
        if policy.budget_usd <= 0 and not self._budgets.external:
            return
        try:
            status = await self._budgets.status(policy.org, policy.budget_usd)
        except LimiterBackendError as exc:
            self._store_failed(exc)
            return  # budgets are checked again on the next request; never block on them
        if status is None or status.spent_usd < status.limit_usd:
            return
        self._observer.budget_denied(policy.org, policy.budget_shadow)
        self._record_denial(policy, "monthly_budget_usd", request_id, policy.budget_shadow)
        if not policy.budget_shadow:
            raise BudgetExceeded(
                f"Organization '{policy.org}' has spent its monthly budget of "
                f"${status.limit_usd:.2f}; it renews at the start of next month (UTC)."
            )

    async def _take(
        self, limits: tuple[Limit, ...], estimate: int
    ) -> tuple[Admission, BucketStore]:
        if self._s.shared and not self.degraded:
            specs = [bucket_spec(lim, estimate) for lim in limits]
            try:
                admission = await self._s.buckets.take(specs)
            except LimiterBackendError as exc:
                self._store_failed(exc)
            else:
                self._store_answered()
                return admission, self._s.buckets
        elif self._s.shared and not self._fail_open:
            raise LimiterUnavailable()
        share = self._share if self._s.shared else 1.0
        specs = [bucket_spec(lim, estimate, share) for lim in limits]
        return await self._s.local_buckets.take(specs), self._s.local_buckets

    def _store_failed(self, exc: LimiterBackendError) -> None:
        self._observer.backend_error()
        if not self._reported_degraded:
            self._reported_degraded = True
            _log.warning("limiter_degraded", error=str(exc), fail_open=self._fail_open)
            self._observer.degraded(True)
        self._store_down_until = self._monotonic() + _RETRY_STORE_AFTER_S
        if not self._fail_open:
            raise LimiterUnavailable() from None

    def _store_answered(self) -> None:
        if self._reported_degraded:
            self._reported_degraded = False
            _log.warning("limiter_recovered")
            self._observer.degraded(False)

    def _deny_rate(
        self,
        policy: LimitPolicy,
        limits: tuple[Limit, ...],
        admission: Admission,
        request_id: str,
        headers: dict[str, str],
    ) -> None:
        denied = [
            lim for lim, r in zip(limits, admission.readings, strict=True) if r.retry_after_s > 0
        ]
        for lim in denied:
            self._observer.denied(policy.org, lim.scope, lim.name, False)
            self._record_denial(policy, lim.key, request_id, False)
        worst = denied[0] if denied else limits[0]
        what = "requests" if worst.name == "rpm" else "tokens"
        raise RateLimitExceeded(
            f"Rate limit reached for {what} per minute on {worst.scope} "
            f"'{worst.owner}': limit {worst.value}. Retry after the time in Retry-After.",
            retry_after_s=admission.retry_after_s,
            headers=headers,
        )

    async def _acquire_slots(self, permit: Permit) -> None:
        for lim in permit.policy.concurrency:
            store = self._concurrency_store()
            limit = lim.value
            if store is self._s.local_concurrency and self._s.shared:
                limit = max(1, int(lim.value * self._share))
            try:
                acquired = await store.acquire(lim.key, limit, permit.request_id)
            except LimiterBackendError as exc:
                self._store_failed(exc)
                store = self._s.local_concurrency
                acquired = await store.acquire(
                    lim.key, max(1, int(limit * self._share)), permit.request_id
                )
            if acquired:
                permit.slots.append((store, lim.key))
                continue
            self._observer.denied(permit.policy.org, lim.scope, lim.name, lim.shadow)
            self._record_denial(permit.policy, lim.key, permit.request_id, lim.shadow)
            if not lim.shadow:
                raise ConcurrencyLimitExceeded(
                    f"Too many requests in flight for {lim.scope} '{lim.owner}': "
                    f"limit {lim.value}.",
                    retry_after_s=1,
                )

    def _concurrency_store(self) -> ConcurrencyStore:
        if self._s.shared and not self.degraded:
            return self._s.concurrency
        if self._s.shared and not self._fail_open:
            raise LimiterUnavailable()
        return self._s.local_concurrency

    async def _evaluate_shadow(
        self, policy: LimitPolicy, limits: tuple[Limit, ...], estimate: int, request_id: str
    ) -> None:
        store = self._s.buckets if self._s.shared and not self.degraded else self._s.local_buckets
        for lim in limits:  # one by one: a shadow limit charges only itself
            try:
                admission = await store.take([bucket_spec(lim, estimate)])
            except LimiterBackendError:
                return
            if not admission.admitted:
                self._observer.denied(policy.org, lim.scope, lim.name, True)
                self._record_denial(policy, lim.key, request_id, True)
                _log.info("shadow_limit_would_deny", org=policy.org, limit=lim.key)

    async def _settle(
        self, permit: Permit, prompt: int, completion: int, prices: tuple[float, float]
    ) -> None:
        actual = prompt + completion
        if permit.store is not None and actual != permit.estimate:
            for lim in permit.policy.rates:
                if lim.name != "tpm" or lim.shadow:
                    continue
                spec = bucket_spec(lim, permit.estimate)
                try:
                    await permit.store.adjust(
                        spec.key, spec.capacity, spec.refill_per_s, permit.estimate - actual
                    )
                except LimiterBackendError as exc:
                    self._note_background_failure(exc)
        usd = cost_usd(prompt, completion, prices[0], prices[1])
        if usd > 0:
            try:
                total = await self._budgets.charge(permit.policy.org, usd)
            except LimiterBackendError as exc:
                self._note_background_failure(exc)
            else:
                self._observer.spent(permit.policy.org, total)

    async def _release(self, store: ConcurrencyStore, key: str, holder: str) -> None:
        try:
            await store.release(key, holder)
        except LimiterBackendError as exc:
            self._note_background_failure(exc)  # the lease frees the slot when it lapses

    def _note_background_failure(self, exc: LimiterBackendError) -> None:
        self._observer.backend_error()
        _log.warning("limiter_background_error", error=str(exc))

    def _record_denial(
        self, policy: LimitPolicy, limit: str, request_id: str, shadow: bool
    ) -> None:
        self._audit(
            AuditEvent(
                kind="limit.shadow_deny" if shadow else "limit.deny",
                time=self._wall(),
                org=policy.org,
                key_id=policy.key_id,
                request_id=request_id,
                subject=limit,
            )
        )


def background(tasks: set[asyncio.Task[None]]) -> Spawn:
    """A spawner that keeps references to its tasks until they finish."""

    def spawn(coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return spawn
