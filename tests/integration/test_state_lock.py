"""The state-dir lock between serving routers and `buffer replay`, across real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.usage.state_lock import LOCK_FILE, StateDirBusy, hold_shared, try_exclusive

REPO = Path(__file__).resolve().parents[2]

# A router stand-in: takes the shared lock, says so, and serves until killed.
HOLDER = """
import sys, time
from pathlib import Path
from appliance.usage.state_lock import hold_shared

with hold_shared(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(3600)
"""


@pytest.fixture
def router(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A child process holding the shared lock on tmp_path."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "held"
    yield child
    child.kill()
    child.wait()
    child.stdout.close()


def test_shared_locks_coexist(tmp_path: Path, router: subprocess.Popen[str]) -> None:
    """Several routers (a child and two holders here) serve from one state dir at once."""
    with hold_shared(tmp_path), hold_shared(tmp_path):
        assert (tmp_path / LOCK_FILE).exists()


def test_exclusive_is_refused_while_a_router_serves(
    tmp_path: Path, router: subprocess.Popen[str]
) -> None:
    """Replay refuses at once, naming the lock file, while a router holds the dir."""
    with pytest.raises(StateDirBusy, match=str(tmp_path / LOCK_FILE)), try_exclusive(tmp_path):
        pytest.fail("replay ran against a live router's state dir")


def test_a_killed_router_leaves_no_stale_lock(
    tmp_path: Path, router: subprocess.Popen[str]
) -> None:
    """Once the router is SIGKILLed, replay gets the dir without any cleanup."""
    router.kill()
    router.wait()
    with try_exclusive(tmp_path):
        pass


def test_a_router_does_not_start_during_a_replay(tmp_path: Path) -> None:
    """A router refuses to serve while a replay holds the dir, and serves once it is done."""
    with try_exclusive(tmp_path):
        with pytest.raises(StateDirBusy, match="replay"), hold_shared(tmp_path):
            pytest.fail("served during a replay")
        with pytest.raises(StateDirBusy), try_exclusive(tmp_path):
            pytest.fail("two replays at once")
    with hold_shared(tmp_path):
        pass


def test_replay_against_a_missing_dir_is_an_error_not_a_new_dir(tmp_path: Path) -> None:
    """try_exclusive does not create a mistyped state dir."""
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="no such state directory"), try_exclusive(missing):
        pass
    assert not missing.exists()


def test_serving_creates_the_state_dir(tmp_path: Path) -> None:
    """hold_shared creates the state dir and the lock file on first start."""
    with hold_shared(tmp_path / "new" / "state"):
        assert (tmp_path / "new" / "state" / LOCK_FILE).exists()
