"""Memory soak: wrk at concurrency 32 against one router for a long run, RSS sampled.

`--soak SECONDS` runs it after the measured cases. The router's resident set size is read
from /proc every `interval_s`; growth is measured from the first sample after the warm-up
(allocator pools, caches and connection pools fill during it) to the last one, so a leak
shows as steady growth and a one-off fill does not count.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import loadgen
from loadgen import Case, Result

CONCURRENCY = 32
INTERVAL_S = 10.0
WARMUP_S = 60.0


@dataclass(slots=True)
class Soak:
    target: str
    duration_s: int
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds in, RSS bytes)
    result: Result | None = None
    problem: str = ""

    def growth(self) -> float | None:
        """RSS growth from the first sample at or after the warm-up to the last; None if short."""
        after = [rss for at, rss in self.samples if at >= min(WARMUP_S, self.duration_s / 2)]
        if len(after) < 2 or after[0] == 0:
            return None
        return after[-1] / after[0] - 1

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "duration_s": self.duration_s,
            "concurrency": CONCURRENCY,
            "rss_samples": [{"t_s": round(at, 1), "rss_bytes": rss} for at, rss in self.samples],
            "growth_after_warmup": self.growth(),
            "result": self.result.as_dict() if self.result else None,
            "problem": self.problem,
        }


def rss_bytes(pid: int) -> int:
    """The process's resident set size, 0 when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def run(case: Case, pid: int, duration_s: int, interval_s: float = INTERVAL_S) -> Soak:
    """wrk `case` (its concurrency forced to 32) for `duration_s`, sampling `pid`'s RSS."""
    case = Case(case.target, case.mode, CONCURRENCY, case.url, case.body, case.key)
    soak = Soak(case.target, duration_s)
    argv, env = loadgen.wrk_argv(case, duration_s)
    started = time.monotonic()
    with subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as wrk:
        try:
            while wrk.poll() is None:
                soak.samples.append((time.monotonic() - started, rss_bytes(pid)))
                deadline = time.monotonic() + interval_s
                while wrk.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.2)
                if time.monotonic() - started > duration_s + loadgen.SLACK_S:
                    wrk.kill()
                    soak.problem = "wrk did not finish in time"
            soak.samples.append((time.monotonic() - started, rss_bytes(pid)))
            stdout, stderr = wrk.communicate(timeout=loadgen.SLACK_S)
        finally:
            if wrk.poll() is None:
                wrk.kill()
    result = Result(case.target, case.mode, CONCURRENCY)
    try:
        loadgen.fill(result, loadgen.parse_summary(stdout, wrk.returncode, stderr))
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        result.problem = f"wrk: {exc!r}"
    soak.result = result
    soak.problem = soak.problem or result.problem
    return soak
