"""Where a reading turns from pass to warn to fail: pure functions over numbers, no I/O.

docs/doctor.md explains each threshold; change them together.
"""

from __future__ import annotations

from appliance.doctor.report import CheckResult, failed, passed, warned

# Clock skew against Redis TIME. Token buckets use Redis's clock, so limits do not care;
# but budget months, override expiry, usage and audit timestamps come from each replica's
# own clock. Beyond 1 s NTP is drifting; beyond 30 s it is not running at all.
SKEW_WARN_S = 1.0
SKEW_FAIL_S = 30.0

# Outbox: the publisher drains it within seconds while the sink answers, so an old record
# means the sink has been refusing for a while. Near the size bound, on_full kicks in.
OUTBOX_AGE_WARN_S = 300.0
OUTBOX_FILL_WARN = 0.5
OUTBOX_FILL_FAIL = 0.9

# Free disk, as a multiple of what the state dir may come to hold (outbox bound + file sink
# + state.min_free_mb + working space).
DISK_WARN_FACTOR = 2.0
# Working space of the state dir's SQLite files besides the outbox backlog: the outbox WAL is
# bounded to ~1 MiB, and so are the audit, spend and override stores' WALs.
# With state.min_free_mb it is the minimum state dir (docs/configuration.md#state).
STATE_WORKING_MB = 16

_MB = 1024 * 1024


def clock_skew(target: str, skew_s: float, uncertainty_s: float) -> CheckResult:
    """Judge `local - redis` seconds, measured to within +-uncertainty_s (half the RTT)."""
    least = max(0.0, abs(skew_s) - uncertainty_s)  # only what the round trip cannot explain
    where = "ahead of" if skew_s > 0 else "behind"
    detail = f"this host is {abs(skew_s):.3f} s {where} Redis (+-{uncertainty_s:.3f} s)"
    fix = "synchronise the clock: enable NTP (timedatectl set-ntp true; chronyc tracking)"
    if least >= SKEW_FAIL_S:
        return failed("clock", target, detail, fix)
    if least >= SKEW_WARN_S:
        return warned("clock", target, detail, fix)
    return passed("clock", target, detail)


def disk(target: str, free_bytes: int, need_bytes: int, reserve_bytes: int = 0) -> CheckResult:
    """Free space against what the outbox (and a file sink) may grow to, and the reserve
    (state.min_free_mb) under which the router refuses every request."""
    detail = f"{free_bytes / _MB:,.0f} MB free; the state dir may need {need_bytes / _MB:,.0f} MB"
    fix = "free disk space, or lower usage.max_buffer_mb (and usage.file_max_mb x file_keep)"
    if free_bytes < reserve_bytes:
        return failed(
            "disk",
            target,
            f"{free_bytes / _MB:,.1f} MB free, under state.min_free_mb"
            f" ({reserve_bytes / _MB:g} MB): the router refuses every request",
            "free disk space on the state dir's filesystem (or lower state.min_free_mb)",
        )
    if free_bytes < need_bytes:
        return failed("disk", target, f"{detail}: a long sink outage would fill it", fix)
    if free_bytes < need_bytes * DISK_WARN_FACTOR:
        return warned("disk", target, detail, fix)
    return passed("disk", target, detail)


def outbox(
    target: str, records: int, size_bytes: int, max_bytes: int, oldest_age_s: float | None
) -> CheckResult:
    """Records waiting to be published: how full the outbox is and how old its oldest is."""
    fill = size_bytes / max_bytes if max_bytes else 0.0
    age = "" if oldest_age_s is None else f", oldest {oldest_age_s:,.0f} s old"
    detail = (
        f"{records} records, {size_bytes / _MB:,.1f} MB ({fill:.0%} of usage.max_buffer_mb){age}"
    )
    fix = (
        "the sink is not taking records: fix it (see the kafka rows), or `routerctl buffer replay`"
    )
    if fill >= OUTBOX_FILL_FAIL:
        return failed("outbox", target, f"{detail}: usage.on_full is about to apply", fix)
    if fill >= OUTBOX_FILL_WARN or (oldest_age_s or 0.0) > OUTBOX_AGE_WARN_S:
        return warned("outbox", target, detail, fix)
    return passed("outbox", target, detail)
