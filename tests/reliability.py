"""The reliability matrix's plugin: rows of docs/reliability.md are tests that say which row
they prove and report the figures they measured.

    @pytest.mark.reliability("1.2", "Kafka down 30 s under load")
    async def test_kafka_outage(figures: Figures) -> None:
        ...
        figures.add("lost", lost)
        figures.add("duplicates", duplicates, bound=batch)

Every marked test's outcome and figures go to a file in `build/reliability/` at the end of
the session (one per process and run); `python -m tests.reliability_matrix` renders
docs/reliability.md from the latest result of each row, so the figures in the doc are the
ones a run measured.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

RESULTS_DIR = Path(__file__).resolve().parent.parent / "build" / "reliability"
_ROW = re.compile(r"^[1-9][0-9]*\.[1-9][0-9]*$")  # "<issue row>.<case>", e.g. "4.3"
_KEY = pytest.StashKey[list[dict[str, Any]]]()


@dataclass
class Figure:
    name: str
    value: float | int | str
    unit: str = ""
    bound: float | int | None = None  # the limit the test held it to, when there is one


@dataclass
class Figures:
    """What one matrix test measured, in the order it was added."""

    items: list[Figure] = field(default_factory=list)

    def add(
        self, name: str, value: float | str, unit: str = "", bound: float | None = None
    ) -> None:
        self.items.append(Figure(name, value, unit, bound))


_FIGURES = pytest.StashKey[Figures]()
# `nox -s soak` runs the matrix at the full sizes; CI runs it small.
SOAK = os.environ.get("ROUTERCTL_SOAK") == "1"


def sized(ci: int, soak: int) -> int:
    """A row's size: `soak` under `nox -s soak`, else `ci`."""
    return soak if SOAK else ci


def row_of(item: pytest.Item) -> tuple[str, str] | None:
    """(row id, what) of a marked test; raises on a malformed marker."""
    marker = item.get_closest_marker("reliability")
    if marker is None:
        return None
    row, what = marker.args
    if not _ROW.match(row) or not what:
        raise pytest.UsageError(f"{item.nodeid}: reliability marker wants ('N.M', 'what')")
    return str(row), str(what)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "reliability(row, what): a row of the reliability matrix (docs/reliability.md)"
    )
    config.stash[_KEY] = []


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    """Figures a matrix test measured; only for tests marked `reliability`."""
    if request.node.get_closest_marker("reliability") is None:
        raise pytest.UsageError("the figures fixture is for tests marked reliability")
    found = Figures()
    request.node.stash[_FIGURES] = found
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _record(item, report)
    return report


def _record(item: pytest.Item, report: pytest.TestReport) -> None:
    row = row_of(item)
    # The call's report is the row's outcome; a setup that failed (a service that did not
    # start) is one too, and then there is no call.
    if row is None or not (report.when == "call" or (report.when == "setup" and report.failed)):
        return
    found = item.stash.get(_FIGURES, Figures())
    item.config.stash[_KEY].append(
        {
            "row": row[0],
            "what": row[1],
            "test": item.nodeid,
            "outcome": report.outcome if report.when == "call" else "error",
            "seconds": round(report.duration, 2),
            "figures": [asdict(f) for f in found.items],
        }
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    rows = session.config.stash.get(_KEY, [])
    if not rows:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    # One file per process and run: a later run of some rows supersedes only those rows.
    path = RESULTS_DIR / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{worker}.jsonl"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    with path.open("w", encoding="utf-8") as out:
        out.writelines(json.dumps({**r, "commit": commit}, sort_keys=True) + "\n" for r in rows)
