"""What one doctor check found: pass, warn, fail or skip, with the one-line fix."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

Status = Literal["pass", "warn", "fail", "skip"]


class CheckResult(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the report; `fix` is empty when there is nothing to do."""

    check: str  # the kind of check: "redis", "kafka.topic", "backend", "outbox", ...
    target: str  # what was checked: an address, topic, backend id or path (never a secret)
    status: Status
    detail: str  # what was found, one line
    fix: str = ""


def passed(check: str, target: str, detail: str) -> CheckResult:
    return CheckResult(check=check, target=target, status="pass", detail=detail)


def warned(check: str, target: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(check=check, target=target, status="warn", detail=detail, fix=fix)


def failed(check: str, target: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(check=check, target=target, status="fail", detail=detail, fix=fix)


def skipped(check: str, target: str, detail: str) -> CheckResult:
    return CheckResult(check=check, target=target, status="skip", detail=detail)


def any_failed(results: Iterable[CheckResult]) -> bool:
    """Whether the router must not be trusted as configured (doctor exits 1)."""
    return any(r.status == "fail" for r in results)


def describe(exc: BaseException) -> str:
    """A library error as one short line: its class and message, never more than 200 chars."""
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def count(n: int, noun: str) -> str:
    """'1 broker', '2 brokers'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
