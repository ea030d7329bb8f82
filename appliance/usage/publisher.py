"""Drain the outbox into the sinks: oldest first, delete only what a sink acknowledged.

The background `Publisher` serves the running router; `replay` is the same rule run once,
to the end, for `routerctl buffer replay` on a stopped router's state dir.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, get_args

from appliance.telemetry.logging import get_logger
from appliance.usage.backoff import Backoff
from appliance.usage.ports import Outbox, OutboxItem, SinkError, Topic, UsageSink

_log = get_logger("routerctl.usage")


class PublishObserver(Protocol):
    """What the publisher reports, for metrics; called on the loop, must not block."""

    def published(self, sink: str, n: int, latency_s: float) -> None: ...

    def failed(self, sink: str, error_kind: str) -> None:
        """error_kind: "open" | "publish" (the sink), "outbox" (reading or deleting), or
        "unexpected" (sink "publisher": a bug, logged with its traceback)."""
        ...

    def resent(self, sink: str, n: int) -> None:
        """n records sent again after an attempt that ended without their acknowledgement
        (each may reach the sink twice)."""
        ...

    def buffer(self, records: int, bytes: int, oldest_age_s: float) -> None: ...


class _Failed(Exception):
    def __init__(self, sink: str, kind: str, cause: BaseException) -> None:
        super().__init__(f"{sink}: {kind}: {cause}")
        self.sink, self.kind, self.cause = sink, kind, cause


@dataclass(slots=True)
class PublisherState:
    """How publishing goes, for the admin API: failures in a row and the last error."""

    consecutive_failures: int = 0
    last_error: str | None = None  # sink messages name servers and paths, never secrets
    last_success_at: float | None = None


class Publisher:
    """One background task that moves batches from the outbox to their sinks.

    Never skips: a batch a sink refused is retried, after a backoff, until it is
    acknowledged. The publisher owns the sinks: it opens them when first needed (a sink that
    cannot open is retried like a failed publish) and closes them in stop().
    """

    def __init__(
        self,
        outbox: Outbox,
        sinks: UsageSink | Mapping[Topic, UsageSink],
        batch_max: int = 500,
        *,
        observer: PublishObserver | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        poll_interval_s: float = 1.0,
        backoff: Backoff | None = None,
        linger_s: float = 0.05,
    ) -> None:
        by_topic = sinks if isinstance(sinks, Mapping) else dict.fromkeys(get_args(Topic), sinks)
        missing = set(get_args(Topic)) - by_topic.keys()
        if missing:
            raise ValueError(f"no sink for topics {sorted(missing)}")
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        self._outbox = outbox
        self._sinks: dict[Topic, UsageSink] = dict(by_topic)
        self._batch_max = batch_max
        self._observer = observer
        self._clock = clock
        self._monotonic = monotonic
        self._poll_s = poll_interval_s
        self._linger_s = linger_s
        self._backoff = backoff or Backoff()
        self._opened: set[int] = set()  # id() of sinks opened
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._retry = asyncio.Event()  # set by replay_now(): end a backoff sleep early
        self._lock = asyncio.Lock()  # one batch at a time: the loop's, or replay_now's
        self.state = PublisherState()
        self._task: asyncio.Task[None] | None = None
        # Seqs a sink acknowledged that are not deleted yet (at most a batch: nothing more is
        # published until they are), and seqs of a failed attempt with no acknowledgement.
        self._acknowledged: list[int] = []
        self._unconfirmed: set[int] = set()

    def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name="usage-publisher")

    def notify(self) -> None:
        """New records are in the outbox: publish now rather than at the next poll."""
        self._wake.set()

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Publish what can be published within timeout_s, then close the sinks.

        Whatever is left stays in the outbox for the next start (or `buffer replay`).
        """
        task, self._task = self._task, None
        self._stopping.set()
        self._wake.set()
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if not done:
                task.cancel()
                await asyncio.wait({task})
            elif not task.cancelled() and (exc := task.exception()) is not None:
                _log.error("usage_publisher_crashed", error=_name(exc))
        await self._forget_before_stop()
        for sink in self._unique_sinks():
            if id(sink) in self._opened:
                await sink.close()
        self._opened.clear()

    async def replay_now(self, limit: int | None = None) -> int:
        """Publish now, without waiting for a backoff, until the outbox is empty or `limit`
        records went; how many. Raises SinkError (saying how far it got) when a sink fails."""
        done = 0
        while limit is None or done < limit:
            want = self._batch_max if limit is None else min(self._batch_max, limit - done)
            try:
                moved = await self.publish_once(want)
            except _Failed as exc:
                self._report_failure(exc)
                raise SinkError(f"{exc.sink} {exc.kind} failed: {exc.cause}") from None
            self._succeeded()
            done += moved
            if moved < want:
                break
        self._backoff.reset()
        self._retry.set()  # the loop may be in a backoff sleep: the sink works again
        await self._report_buffer()
        return done

    async def publish_once(self, max_records: int | None = None) -> int:
        """Publish one batch (up to batch_max records); how many were acknowledged."""
        async with self._lock:
            return await self._publish_batch(min(max_records or self._batch_max, self._batch_max))

    async def _publish_batch(self, size: int) -> int:
        # Delete what a sink already took before sending anything more: when the outbox
        # cannot be written (a full disk), the batch is not published again and again.
        await self._forget_acknowledged()
        try:
            batch = await self._outbox.peek(size)
        except Exception as exc:
            raise _Failed("outbox", "outbox", exc) from exc
        resent, self._unconfirmed = self._unconfirmed, set()
        for sink, items in _group(batch, self._sinks):
            await self._open(sink)
            await self._publish_group(sink, items, resent)
        await self._forget_acknowledged()
        return len(batch)

    async def _publish_group(
        self, sink: UsageSink, items: list[OutboxItem], resent: set[int]
    ) -> None:
        again = sum(1 for item in items if item.seq in resent)
        if again and self._observer is not None:
            self._observer.resent(sink.name, again)
        started = self._monotonic()
        try:
            await sink.publish(items)
        except SinkError as exc:
            taken = [item for item in items if item.seq in exc.acknowledged]
            self._taken(sink, taken, started)
            self._unconfirmed.update(i.seq for i in items if i.seq not in exc.acknowledged)
            raise _Failed(sink.name, "publish", exc) from exc
        self._taken(sink, items, started)

    def _taken(self, sink: UsageSink, items: list[OutboxItem], started: float) -> None:
        """A sink acknowledged `items`: they are never sent again by this process, even
        when deleting them from the outbox fails (then the delete is what is retried)."""
        if not items:
            return
        self._acknowledged.extend(item.seq for item in items)
        if self._observer is not None:
            self._observer.published(sink.name, len(items), self._monotonic() - started)

    async def _forget_acknowledged(self) -> None:
        if not self._acknowledged:
            return
        try:
            await self._outbox.delete(self._acknowledged)
        except Exception as exc:
            raise _Failed("outbox", "outbox", exc) from exc
        self._acknowledged = []

    async def _forget_before_stop(self) -> None:
        try:
            await self._forget_acknowledged()
        except _Failed as exc:
            # They stay in the outbox: the next start publishes them again (at-least-once).
            _log.warning(
                "usage_acknowledged_not_deleted",
                records=len(self._acknowledged),
                error=str(exc.cause) or _name(exc.cause),
            )

    async def _run(self) -> None:
        while True:
            self._wake.clear()  # before peeking: a notify() from now on is not missed
            tried_while_stopping = self._stopping.is_set()
            try:
                moved = await self.publish_once()
            except Exception as exc:  # the loop must outlive any failure, even a bug
                self._report_failure(exc)
                await self._report_buffer()  # the buffer grows during an outage: show it
                if self._stopping.is_set():
                    if not tried_while_stopping:
                        # That try began before the stop (it may have hung until its
                        # timeout): one more, at once, within stop()'s own time bound.
                        continue
                    return  # the sink is down: what is left stays in the outbox
                await self._wait_either(self._backoff.next_delay())
                continue
            self._backoff.reset()
            self._succeeded()
            await self._report_buffer()
            if moved < self._batch_max:
                if self._stopping.is_set():
                    return
                await self._wait(self._wake, self._poll_s)
                # Linger so one publish (one fsync or Kafka round trip, one delete) carries a
                # batch, not each request on its own: records are durable in the outbox already.
                await self._wait(self._stopping, self._linger_s)

    async def _open(self, sink: UsageSink) -> None:
        if id(sink) in self._opened:
            return
        try:
            await sink.open()
        except SinkError as exc:
            raise _Failed(sink.name, "open", exc) from exc
        self._opened.add(id(sink))

    def _succeeded(self) -> None:
        self.state.consecutive_failures = 0
        self.state.last_success_at = self._clock()

    async def _wait_either(self, timeout_s: float) -> None:
        """A backoff sleep that a stop, or a replay_now() that got through, cuts short."""
        # Not _wake: new records arriving during an outage must not shorten the backoff.
        self._retry.clear()
        waits = [asyncio.ensure_future(e.wait()) for e in (self._stopping, self._retry)]
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    def _report_failure(self, exc: Exception) -> None:
        self.state.consecutive_failures += 1
        if isinstance(exc, _Failed):
            sink, kind, cause = exc.sink, exc.kind, exc.cause
            self.state.last_error = f"{sink} {kind}: {str(cause) or _name(cause)}"
            _log.warning(
                "usage_publish_failed", sink=sink, kind=kind, error=str(cause) or _name(cause)
            )
        else:
            sink, kind = "publisher", "unexpected"
            self.state.last_error = f"publisher: {_name(exc)}"
            _log.error("usage_publisher_error", error=_name(exc), exc_info=exc)
        if self._observer is not None:
            self._observer.failed(sink, kind)

    async def _report_buffer(self) -> None:
        if self._observer is None:
            return
        try:
            stats = await self._outbox.stats()
        except Exception as exc:
            self._observer.failed("outbox", "outbox")
            _log.warning("usage_outbox_stats_failed", error=_name(exc))
            return
        age = 0.0 if stats.oldest_created_at is None else self._clock() - stats.oldest_created_at
        self._observer.buffer(stats.records, stats.bytes, max(age, 0.0))

    def _unique_sinks(self) -> list[UsageSink]:
        return list({id(s): s for s in self._sinks.values()}.values())

    @staticmethod
    async def _wait(event: asyncio.Event, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await event.wait()
        except TimeoutError:
            pass


def _name(exc: BaseException) -> str:
    return type(exc).__name__


def _group(
    batch: Sequence[OutboxItem], sinks: Mapping[Topic, UsageSink]
) -> list[tuple[UsageSink, list[OutboxItem]]]:
    """Split a batch per sink, keeping seq order within each (and so each key's order)."""
    groups: dict[int, tuple[UsageSink, list[OutboxItem]]] = {}
    for item in batch:
        sink = sinks[item.topic]
        groups.setdefault(id(sink), (sink, []))[1].append(item)
    return list(groups.values())


async def replay(
    outbox: Outbox,
    sink: UsageSink,
    *,
    limit: int | None = None,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
    batch_max: int = 500,
) -> int:
    """Publish the oldest records (all, or `limit`) to `sink`, deleting each acknowledged batch.

    Resumable: an interrupted run leaves unacknowledged records in the outbox, and the next
    run starts from the oldest remaining one. `dry_run` opens no sink and deletes nothing; it
    only counts. Returns the number of records published (or, dry, that would be). A sink
    failure raises SinkError after the batches before it were deleted.
    """
    # The count is for the progress bar only: the loop runs until the outbox is empty, so a
    # size counter that drifted (a hand-repaired file) can never end a replay early.
    total = (await outbox.stats()).records
    total = total if limit is None else min(limit, total)
    report = progress or (lambda _done, _total: None)
    report(0, total)
    if not dry_run:
        await sink.open()
    done, after = 0, 0
    try:
        while limit is None or done < limit:
            want = batch_max if limit is None else min(batch_max, limit - done)
            batch = await outbox.peek(want, after_seq=after)
            if not batch:
                break
            if not dry_run:
                try:
                    await sink.publish(batch)
                except SinkError as exc:  # what the sink did take is not sent again
                    await outbox.delete([i.seq for i in batch if i.seq in exc.acknowledged])
                    raise
                await outbox.delete([item.seq for item in batch])
            after = batch[-1].seq
            done += len(batch)
            total = max(total, done)
            report(done, total)
    finally:
        if not dry_run:
            await sink.close()
    return done
