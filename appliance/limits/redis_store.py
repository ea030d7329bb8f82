"""The limit store in Redis (distributed mode), shared by every replica.

An admission is one EVALSHA of the limits script (redis_script.py): the org's spend against
its budget, every token bucket and every concurrency slot, atomically, all or nothing. On
the shared connection, admissions of one org that queue in the same turn of the loop share
one EVALSHA (redis_admits.py). A batch of settlements is one pipeline holding one EVALSHA
per org. Keys, all tagged with the org so that one call's keys share a Redis Cluster slot:

    rl:{org}:org:acme:rpm             token bucket (hash: tokens, ts)
    cc:{org}:key:k1:max_concurrent    concurrency slots (sorted set: request id -> lease end)
    budget:{org}:2026-11              the org's spend in that month (float)

Every call is bounded by `timeout_s`, and any failure surfaces as `LimiterBackendError`, so
a dead or frozen Redis costs a request at most about `timeout_s` and the limiter applies
its failure mode.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterError, NoScriptError, RedisError, TryAgainError

from appliance.limits import bucket
from appliance.limits.budget import end_of_period
from appliance.limits.ports import (
    BUDGET,
    CONCURRENCY,
    RATE,
    Admission,
    AdmitRequest,
    LimiterBackendError,
    Settlement,
    Verdict,
)
from appliance.limits.redis_admits import SharedAdmissions, evalsha
from appliance.limits.redis_batch import AutoPipeline, Call
from appliance.limits.redis_client import RedisClient, describe
from appliance.limits.redis_mux import Multiplexed
from appliance.limits.redis_script import BUCKET_LUA
from appliance.telemetry.logging import get_logger

_T = TypeVar("_T")
_log = get_logger("routerctl.limits")
_NO_READINGS = Admission(admitted=False, readings=())
_ADMIT_CODES = {0: "", 1: BUDGET, 2: RATE, 3: CONCURRENCY}
_ONE = ("1", b"1")
_SHAPES_KEPT = 4096
RETENTION_AFTER_PERIOD_S = 40 * 86_400  # a month's spend is kept this long after it ends


@dataclass
class _OrgBatch:
    """One org's share of a settlement batch: one EVALSHA."""

    keys: list[str] = field(default_factory=list)
    adjusts: list[str] = field(default_factory=list)  # capacity refill, then delta: as sent
    slots: list[str] = field(default_factory=list)
    holders: list[str] = field(default_factory=list)
    spend: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))


class RedisAdmissionStore:
    """An `AdmissionStore` over a caller-owned client (`Redis` or `RedisCluster`, from
    redis_client.py); it also holds the leases it took, for `LeaseKeeper` to renew."""

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = "",
        lease_s: float = 60.0,
        timeout_s: float = 0.05,
        multiplex: bool = False,
    ) -> None:
        """`multiplex`: send every call on one shared connection (redis_mux.py), for a
        standalone Redis; else each batch is a pipeline on a pooled connection."""
        if lease_s <= 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s!r}")
        self._client = client
        self._prefix = prefix
        self._lease_ms = max(1, round(lease_s * 1000))
        self._lease_text = str(self._lease_ms)
        self._shapes: dict[tuple[float, float], str] = {}
        self._timeout_s = timeout_s
        self._loaded = False
        self._held: set[tuple[str, str]] = set()  # (slot set key, holder), renewed until released
        self._folded: set[tuple[str, str]] = set()  # (org, period) whose old spend key was moved
        # The untagged key of the old layout is in another slot (CROSSSLOT): a cluster
        # never held that layout, so there is nothing to fold.
        self._fold = not isinstance(client, RedisCluster)
        # A cluster slot being moved answers TRYAGAIN until the org's keys are together
        # again: that call alone is sent again, within its deadline, without the others.
        self._admissions = AutoPipeline(self._send_admissions, again=_moving, deadline_s=timeout_s)
        self._mux = (
            Multiplexed(client.connection_pool) if isinstance(client, Redis) and multiplex else None
        )
        self._shared = SharedAdmissions(self._mux) if self._mux is not None else None

    @property
    def lease_s(self) -> float:
        return self._lease_ms / 1000

    def bucket_key(self, org: str, key: str) -> str:
        return self._buckets_of(org) + key

    def _buckets_of(self, org: str) -> str:
        """What every bucket key of `org` starts with."""
        return f"{self._prefix}rl:{{{org}}}:"

    def slot_key(self, org: str, key: str) -> str:
        return f"{self._prefix}cc:{{{org}}}:{key}"

    def spend_key(self, org: str, period: str) -> str:
        # The period is last and fixed-width, so an org id holding ':' stays unambiguous.
        return f"{self._prefix}budget:{{{org}}}:{period}"

    def held(self) -> list[tuple[str, str]]:
        """(slot set key, holder) pairs taken here and not released: the leases to renew."""
        return list(self._held)

    async def open(self) -> None:
        """Load the script now, so the first request does not pay for it (optional)."""
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        await self._bounded("script load", self._load(deadline))

    async def admit(self, request: AdmitRequest) -> Verdict:
        bucket.require_distinct([*request.buckets, *request.shadow])
        call = self._admit_call(request)
        try:
            if self._mux is not None:  # the shared connection batches writes itself
                reply = await self._admit_shared(request.org, call)
                if isinstance(reply, RedisError):
                    raise reply
            else:
                reply = await self._admissions.call(call)
        except RedisError as exc:  # this call's own error reply (the batch's is one already)
            message = f"redis admit failed for org {request.org}: {describe(exc)}"
            raise LimiterBackendError(message, org=request.org) from exc
        return self._verdict(request, reply)

    async def settle(self, batch: Sequence[Settlement]) -> dict[str, float]:
        groups = self._group(batch)
        fresh = self._to_fold(groups)
        calls: list[Call] = [self._fold_call(org, period) for org, period in fresh]
        folds = len(calls)
        orgs = [org for org, group in groups.items() if group.keys]
        calls += [self._settle_call(groups[org]) for org in orgs]
        if not calls:
            return {}
        replies = await self._call("settle", calls)
        self._folded.update(fresh)  # one answered attempt each: an error is logged, not retried
        for reply in replies[:folds]:
            if isinstance(reply, RedisError):
                _log.warning("limiter_spend_fold_failed", error=describe(reply))
        totals: dict[str, float] = {}
        failed = None
        for org, reply in zip(orgs, replies[folds:], strict=True):
            if isinstance(reply, RedisError):
                failed = reply
            elif reply:
                totals[org] = float(reply.split()[-1])  # the last period of the batch
        if failed is not None:
            raise LimiterBackendError(f"redis settle failed: {describe(failed)}")
        return totals

    async def renew(self, pairs: Sequence[tuple[str, str]]) -> int:
        """Push the leases of (slot set key, holder) pairs to now + lease_s, one EVALSHA per
        org in one round trip. Returns how many were live and renewed (none is revived)."""
        by_org: defaultdict[str, list[tuple[str, str]]] = defaultdict(list)
        for key, holder in pairs:
            by_org[_hash_tag(key)].append((key, holder))
        calls: list[Call] = [
            (
                [key for key, _ in group],
                ["renew", " ".join([str(self._lease_ms), *(h for _, h in group)])],
            )
            for group in by_org.values()
        ]
        if not calls:
            return 0
        replies = await self._call("renew", calls)
        for reply in replies:
            if isinstance(reply, RedisError):
                raise LimiterBackendError(f"redis renew failed: {describe(reply)}")
        return sum(int(reply) for reply in replies)

    async def ping(self) -> None:
        """Raise LimiterBackendError unless Redis answers PING within the timeout."""
        await self._bounded("ping", self._client.ping())

    def _admit_call(self, request: AdmitRequest) -> Call:
        org = request.org
        specs = (*request.buckets, *request.shadow)
        buckets_of = self._buckets_of(org)
        keys = [buckets_of + s.key for s in specs]
        keys += [self.slot_key(org, s.key) for s in request.slots]
        budget = "none"  # no spend key
        if request.budget is not None:
            keys.append(self.spend_key(org, request.budget.period))
            budget = repr(request.budget.limit_usd if request.budget.enforced else -1.0)
        fields = [
            request.holder,
            self._lease_text,
            str(len(request.buckets)),
            str(len(request.shadow)),
            str(len(request.slots)),
            budget,
        ]
        for spec in specs:
            fields += (self._shape(spec.capacity, spec.refill_per_s), repr(spec.cost))
        for slot in request.slots:
            fields += (str(slot.limit), "1" if slot.enforced else "0")
        return keys, ["admit", " ".join(fields)]

    def _shape(self, capacity: float, refill_per_s: float) -> str:
        """A bucket's capacity and refill as the script reads them; remembered, as limits
        are few (the memory is bounded all the same)."""
        text = self._shapes.get((capacity, refill_per_s))
        if text is None:
            if len(self._shapes) >= _SHAPES_KEPT:
                self._shapes.clear()
            text = self._shapes[capacity, refill_per_s] = f"{capacity!r} {refill_per_s!r}"
        return text

    def _verdict(self, request: AdmitRequest, reply: bytes | str) -> Verdict:
        fields = reply.split()
        refused, spent = _ADMIT_CODES[int(fields[0])], float(fields[1])
        if refused == BUDGET:
            return Verdict(BUDGET, _NO_READINGS, (), (), spent)
        nb, ns = len(request.buckets), len(request.shadow)
        tokens = [float(t) for t in fields[2 : 2 + nb]]  # float() takes bytes and str alike
        readings = bucket.admission(request.buckets, tokens, admitted=not refused)
        if refused == RATE:
            return Verdict(RATE, readings, (), (), spent)
        shadow = tuple(x in _ONE for x in fields[2 + nb : 2 + nb + ns]) if not refused else ()
        free = tuple(x in _ONE for x in fields[2 + nb + ns :])
        if not refused:
            for slot, ok in zip(request.slots, free, strict=True):
                if ok:
                    self._held.add((self.slot_key(request.org, slot.key), request.holder))
        return Verdict(refused, readings, shadow, free, spent)

    def _group(self, batch: Iterable[Settlement]) -> dict[str, _OrgBatch]:
        groups: defaultdict[str, _OrgBatch] = defaultdict(_OrgBatch)
        for item in batch:
            group = groups[item.org]
            for a in item.adjusts:
                group.keys.append(self.bucket_key(item.org, a.key))
                group.adjusts += (self._shape(a.capacity, a.refill_per_s), repr(a.delta))
            for key in item.releases:
                slot = self.slot_key(item.org, key)
                self._held.discard((slot, item.holder))  # not renewed even if ZREM fails
                group.slots.append(slot)
                group.holders.append(item.holder)
            if item.usd:
                group.spend[item.period] += item.usd
        for org, group in groups.items():
            group.keys += group.slots
            group.keys += (self.spend_key(org, period) for period in group.spend)
        return groups

    def _to_fold(self, groups: dict[str, _OrgBatch]) -> list[tuple[str, str]]:
        """(org, period) pairs spending here for the first time: their old keys are moved."""
        if not self._fold:
            return []
        return [(o, p) for o, g in groups.items() for p in g.spend if (o, p) not in self._folded]

    def _fold_call(self, org: str, period: str) -> Call:
        old = f"{self._prefix}budget:{org}:{period}"
        return [old, self.spend_key(org, period)], ["fold"]

    @staticmethod
    def _settle_call(group: _OrgBatch) -> Call:
        counts = (len(group.adjusts) // 2, len(group.slots), len(group.spend))
        fields = [str(n) for n in counts]
        fields += group.adjusts
        fields += group.holders
        for period, usd in group.spend.items():
            fields += (repr(usd), str(end_of_period(period) + RETENTION_AFTER_PERIOD_S))
        return group.keys, ["settle", " ".join(fields)]

    async def _send_admissions(self, calls: list[Call]) -> list[Any]:
        return await self._call("admit", calls)

    async def _admit_shared(self, org: str, call: Call) -> Any:
        """On the shared connection, in one hop (alone or with the org's other admissions
        of this turn: redis_admits.py) when the script is loaded and the connection open
        (nearly always); else, or after NOSCRIPT, through `_call`."""
        assert self._shared is not None
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        if self._loaded and (future := self._shared.send(org, call, deadline)):
            try:
                reply = await future
            except (RedisError, OSError) as exc:
                raise LimiterBackendError(f"redis admit failed: {describe(exc)}") from exc
            if not isinstance(reply, NoScriptError):
                return reply
            self._loaded = False  # Redis restarted: load the script before sending again
        return (await self._call("admit", [call], deadline))[0]

    async def _call(self, op: str, calls: list[Call], deadline: float | None = None) -> list[Any]:
        """One round trip for many EVALSHAs, within `timeout_s`; replies in order, errors
        as exception objects. The deadline covers connecting, the NOSCRIPT retry and the
        client's own retries; a cancelled or late command never leaves its reply to be
        read as another's (redis-py drops that connection; so does the shared one)."""
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + self._timeout_s
        try:
            if self._mux is not None:  # it keeps the deadline itself: no timeout context
                return await self._pipeline(calls, deadline)
            async with asyncio.timeout_at(deadline):
                return await self._pipeline(calls, deadline)
        except (RedisError, OSError) as exc:  # OSError includes TimeoutError
            raise LimiterBackendError(f"redis {op} failed: {describe(exc)}") from exc

    async def _pipeline(self, calls: list[Call], deadline: float) -> list[Any]:
        if not self._loaded:
            await self._load(deadline)
        replies = await self._send(calls, deadline)
        retry = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if retry:  # a NOSCRIPT call did nothing: load the script and send those again
            await self._load(deadline)
            again = await self._send([calls[i] for i in retry], deadline)
            for i, reply in zip(retry, again, strict=True):
                replies[i] = reply
        return replies

    async def aclose(self) -> None:
        """Close the shared connection, if any (the client is the caller's to close)."""
        if self._mux is not None:
            await self._mux.aclose()

    async def _send(self, calls: list[Call], deadline: float) -> list[Any]:
        commands = [evalsha(call) for call in calls]
        if self._mux is not None:
            return await self._mux.execute(commands, deadline)
        async with self._client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute(raise_on_error=False))

    async def _load(self, deadline: float) -> None:
        if self._mux is not None:
            (reply,) = await self._mux.execute([("SCRIPT", "LOAD", BUCKET_LUA)], deadline)
            if isinstance(reply, RedisError):
                raise reply
        else:
            await self._client.script_load(BUCKET_LUA)
        self._loaded = True

    async def _bounded(self, op: str, call: Awaitable[_T]) -> _T:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await call
        except (RedisError, OSError) as exc:  # OSError includes asyncio's TimeoutError
            raise LimiterBackendError(f"redis {op} failed: {describe(exc)}") from exc


def _moving(reply: BaseException) -> bool:
    """A reply that a moment later may be an answer: the slot is being moved (TRYAGAIN) or
    its primary is being replaced (CLUSTERDOWN), and the client's own retries ran out."""
    return isinstance(reply, TryAgainError | ClusterError)


def _hash_tag(key: str) -> str:
    """The org a key belongs to: the text between its first '{' and the next '}'."""
    return key.partition("{")[2].partition("}")[0]


__all__ = ["BUCKET_LUA", "RETENTION_AFTER_PERIOD_S", "RedisAdmissionStore"]
