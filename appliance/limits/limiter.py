"""The limiter: admit a request against its rate, concurrency and budget limits, then settle.

On the way in, one call to the limit store decides everything at once: the org's spend
against its budget, every token bucket (enforced all or nothing, shadow ones each on its
own) and every concurrency slot; with Redis that is one round trip. On the way out, off
the response path, the request's settlement (the token estimate trued up to real usage,
its slots released, its cost added to the org's month) is queued for the Settler, which
sends it in a batch with others.

While the shared store fails, `open` admits against in-process buckets holding this
replica's share of each limit, and `closed` answers 503; the store is retried after a
short pause, so a dead Redis costs at most one short timeout per pause, not per request.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from appliance.audit.events import AuditEvent
from appliance.errors import (
    BudgetExceeded,
    ConcurrencyLimitExceeded,
    LimiterUnavailable,
    RateLimitExceeded,
    RequestExceedsLimit,
)
from appliance.limits.budget import cost_usd, period_end, period_of, period_start
from appliance.limits.policy import (
    Limit,
    LimitPolicy,
    bucket_spec,
    oversized,
    rate_headers,
    slot_spec,
)
from appliance.limits.ports import (
    RATE,
    Adjust,
    AdmissionStore,
    AdmitRequest,
    BucketSpec,
    BudgetAuthority,
    LimiterBackendError,
    LimitObserver,
    Settlement,
    SpendCheck,
    Verdict,
)
from appliance.limits.settler import Settler
from appliance.telemetry.logging import get_logger

_RETRY_STORE_AFTER_S = 1.0
_log = get_logger("routerctl.limits")

Audit = Callable[[AuditEvent], None]


@dataclass(slots=True)
class Permit:
    """What one admitted request holds until it ends."""

    policy: LimitPolicy
    estimate: int
    headers: dict[str, str]
    request_id: str = ""
    holder: str = ""  # the lease member of its slots: unique, unlike a client's request id
    store: AdmissionStore | None = None  # where its buckets were charged and slots taken
    tpm: tuple[BucketSpec, ...] = ()  # the enforced tpm buckets, to true up
    slots: tuple[str, ...] = ()  # slot keys held, until released
    bill: tuple[tuple[Adjust, ...], float] | None = None  # settled, waiting for the release
    settled: bool = False  # the reservation is settled once, however the request ended
    released: bool = False


@dataclass(frozen=True, slots=True)
class LimiterStores:
    local: AdmissionStore  # in-process: the only store when embedded, else the fallback
    shared: AdmissionStore | None = None  # Redis, when replicas share limits


class Limiter:
    def __init__(
        self,
        *,
        stores: LimiterStores,
        authority: BudgetAuthority | None,
        settler: Settler,
        fail_open: bool,
        expected_replicas: int,
        observer: LimitObserver,
        audit: Audit,
        wall: Callable[[], float],
        monotonic: Callable[[], float],
    ) -> None:
        self._local, self._shared = stores.local, stores.shared
        self._spend_store = stores.shared or stores.local  # where every request's cost goes
        self._authority = authority
        self._settler = settler
        self._fail_open = fail_open
        self._share = 1.0 / expected_replicas
        self._observer = observer
        self._audit = audit
        self._wall = wall
        self._monotonic = monotonic
        # When the store may be tried again: None for the whole store, an org's id for its
        # keys alone (a Redis Cluster slot moving or without a primary: everyone else goes on).
        self._down_until: dict[str | None, float] = {}
        self._reported_degraded = False
        self._period, self._period_starts, self._period_ends = "", 0.0, 0.0
        # Lease members: this limiter's id and a counter, unique across replicas and
        # requests even when clients reuse an x-request-id.
        self._holder_prefix = uuid.uuid4().hex[:16] + "-"
        self._holders = itertools.count()

    @property
    def degraded(self) -> bool:
        return self._shared is not None and self._monotonic() < self._down_until.get(None, 0.0)

    def _store_down_for(self, org: str) -> bool:
        now, down = self._monotonic(), self._down_until
        return now < down.get(None, 0.0) or now < down.get(org, 0.0)

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
        if self._authority is not None:
            await self._check_authority(policy, request_id)
        if policy.limited or (policy.budget_usd > 0 and self._authority is None):
            permit.holder = f"{self._holder_prefix}{next(self._holders)}"
            store, request, verdict = await self._decide(policy, estimate, permit.holder)
            self._judge(policy, request, verdict, permit)
            permit.store = store
            permit.tpm = tuple(
                s
                for lim, s in zip(policy.enforced, request.buckets, strict=True)
                if lim.name == "tpm"
            )
            permit.slots = tuple(
                s.key for s, held in zip(request.slots, verdict.slots, strict=True) if held
            )
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
        actual = prompt + completion
        delta = float(permit.estimate - actual)
        adjusts = tuple(Adjust(s.key, s.capacity, s.refill_per_s, delta) for s in permit.tpm)
        try:
            usd = cost_usd(prompt, completion, *prices)
        except ValueError as exc:  # a negative count or price: never a credit, never a crash
            _log.error("limiter_bill_refused", error=str(exc), org=permit.policy.org)
            usd = 0.0
        permit.bill = (adjusts if delta else (), usd)
        if permit.released or not permit.slots:
            self._submit(permit)  # else it goes with the release: one settlement, not two

    def release(self, permit: Permit) -> None:
        """The request is over: give its concurrency slots back (with its bill, if settled)."""
        if permit.released:
            return
        permit.released = True
        if permit.slots:
            self._submit(permit)

    async def _check_authority(self, policy: LimitPolicy, request_id: str) -> None:
        assert self._authority is not None
        try:
            status = await self._authority.status(policy.org)
        except LimiterBackendError as exc:
            self._store_failed(exc)
            return  # budgets are checked again on the next request; never block on them
        if status.spent_usd >= status.limit_usd:
            self._deny_budget(policy, request_id, status.limit_usd)

    async def _decide(
        self, policy: LimitPolicy, estimate: int, holder: str
    ) -> tuple[AdmissionStore, AdmitRequest, Verdict]:
        if self._shared is not None:
            if not self._store_down_for(policy.org):
                request = self._request(policy, estimate, holder, share=1.0, budget=True)
                try:
                    verdict = await self._shared.admit(request)
                except LimiterBackendError as exc:
                    self._store_failed(exc)
                else:
                    self._store_answered()
                    return self._shared, request, verdict
            elif not self._fail_open:
                raise LimiterUnavailable()
            # This replica's share of each limit; budgets are not checked meanwhile.
            request = self._request(policy, estimate, holder, self._share, budget=False)
            return self._local, request, await self._local.admit(request)
        request = self._request(policy, estimate, holder, share=1.0, budget=True)
        try:
            return self._local, request, await self._local.admit(request)
        except LimiterBackendError as exc:  # the spend file could not be read
            self._store_failed(exc)
            request = replace(request, budget=None)
            return self._local, request, await self._local.admit(request)

    def _request(
        self, policy: LimitPolicy, estimate: int, holder: str, share: float, budget: bool
    ) -> AdmitRequest:
        check = None
        if budget and policy.budget_usd > 0 and self._authority is None:
            check = SpendCheck(self._current_period(), policy.budget_usd, not policy.budget_shadow)
        if share == 1.0:
            buckets, shadow = policy.whole_buckets(estimate)
            return AdmitRequest(policy.org, holder, buckets, shadow, policy.whole_slots, check)
        return AdmitRequest(
            org=policy.org,
            holder=holder,
            buckets=tuple(bucket_spec(r, estimate, share) for r in policy.enforced),
            shadow=tuple(bucket_spec(r, estimate, share) for r in policy.shadow),
            slots=tuple(slot_spec(c, share) for c in policy.concurrency),
            budget=check,
        )

    def _judge(
        self, policy: LimitPolicy, request: AdmitRequest, verdict: Verdict, permit: Permit
    ) -> None:
        """Raise the refusal the verdict names; record every shadow limit that would refuse."""
        check = request.budget
        if check is not None and verdict.spent_usd >= check.limit_usd:
            self._deny_budget(policy, permit.request_id, check.limit_usd)
        if policy.enforced:
            permit.headers = rate_headers(policy.enforced, verdict.buckets.readings)
        if verdict.refused == RATE:
            self._deny_rate(policy, policy.enforced, verdict, permit)
        for lim, charged in zip(policy.shadow, verdict.shadow, strict=False):
            if not charged:
                self._record_denial(policy, lim, permit.request_id)
                _log.info("shadow_limit_would_deny", org=policy.org, limit=lim.key)
        for lim, free in zip(policy.concurrency, verdict.slots, strict=False):
            if free:
                continue
            self._record_denial(policy, lim, permit.request_id)
            if not lim.shadow:
                raise ConcurrencyLimitExceeded(
                    f"Too many requests in flight for {lim.scope} '{lim.owner}': "
                    f"limit {lim.value}.",
                    retry_after_s=1,
                )

    def _deny_budget(self, policy: LimitPolicy, request_id: str, limit_usd: float) -> None:
        self._observer.budget_denied(policy.org, policy.budget_shadow)
        self._audit_denial(policy, "monthly_budget_usd", request_id, policy.budget_shadow)
        if not policy.budget_shadow:
            raise BudgetExceeded(
                f"Organization '{policy.org}' has spent its monthly budget of "
                f"${limit_usd:.2f}; it renews at the start of next month (UTC)."
            )

    def _deny_rate(
        self, policy: LimitPolicy, limits: tuple[Limit, ...], verdict: Verdict, permit: Permit
    ) -> None:
        readings = verdict.buckets.readings
        denied = [lim for lim, r in zip(limits, readings, strict=True) if r.retry_after_s > 0]
        for lim in denied:
            self._record_denial(policy, lim, permit.request_id)
        worst = denied[0] if denied else limits[0]
        what = "requests" if worst.name == "rpm" else "tokens"
        raise RateLimitExceeded(
            f"Rate limit reached for {what} per minute on {worst.scope} "
            f"'{worst.owner}': limit {worst.value}. Retry after the time in Retry-After.",
            retry_after_s=verdict.buckets.retry_after_s,
            headers=permit.headers,
        )

    def _submit(self, permit: Permit) -> None:
        """Queue what the permit has to settle now: its bill, its slots once released."""
        releases: tuple[str, ...] = ()
        bill = permit.bill
        if permit.released:
            releases, permit.slots = permit.slots, ()
        permit.bill = None
        adjusts, usd = bill if bill is not None else ((), 0.0)
        store = permit.store or self._spend_store
        org, holder = permit.policy.org, permit.holder
        period = self._current_period() if usd else ""
        if store is not self._spend_store and usd:
            # Admitted in-process while Redis was away: the spend still goes to Redis.
            self._settler.submit(self._spend_store, Settlement(org, usd=usd, period=period))
            usd = 0.0
        if adjusts or releases or usd:
            self._settler.submit(store, Settlement(org, holder, adjusts, releases, usd, period))

    def _current_period(self) -> str:
        """The UTC month of now, "YYYY-MM": recomputed only when the month changes."""
        now = self._wall()
        if not self._period_starts <= now < self._period_ends:
            self._period = period_of(now)
            self._period_starts = float(period_start(self._period))
            self._period_ends = float(period_end(now))
        return self._period

    def _store_failed(self, exc: LimiterBackendError) -> None:
        self._observer.backend_error()
        now = self._monotonic()
        if exc.org is not None:
            if now >= self._down_until.get(exc.org, 0.0):  # a new pause, not a longer one
                _log.warning(
                    "limiter_degraded_org", org=exc.org, error=str(exc), fail_open=self._fail_open
                )
        elif not self._reported_degraded:
            self._reported_degraded = True
            _log.warning("limiter_degraded", error=str(exc), fail_open=self._fail_open)
            self._observer.degraded(True)
        self._down_until[exc.org] = now + _RETRY_STORE_AFTER_S
        if not self._fail_open:
            raise LimiterUnavailable() from None

    def _store_answered(self) -> None:
        if self._reported_degraded:
            self._reported_degraded = False
            _log.warning("limiter_recovered")
            self._observer.degraded(False)

    def _record_denial(self, policy: LimitPolicy, lim: Limit, request_id: str) -> None:
        self._observer.denied(policy.org, lim.scope, lim.name, lim.shadow)
        self._audit_denial(policy, lim.key, request_id, lim.shadow)

    def _audit_denial(self, policy: LimitPolicy, limit: str, request_id: str, shadow: bool) -> None:
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
