"""`routerctl buffer inspect / replay` on prepared state dirs, as an operator runs them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.usage.ports import Topic
from appliance.usage.sqlite_outbox import SqliteOutbox
from tests.e2e.cli import routerctl_command
from tests.integration.test_usage_sinks import consume
from tests.services import KafkaBroker, free_port, kafka_broker, restore_services

__all__ = ["kafka_broker", "restore_services"]  # fixtures, for the Kafka test

BUFFER = [*routerctl_command(), "buffer"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # piped: whole rows
    return subprocess.run(
        [*BUFFER, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command, checked to be exactly one line."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("routerctl: error: ")
    return lines[0]


def rid(n: int) -> str:
    return f"req-{n:05d}"


def prepare(state_dir: Path, usage: int, audit: int = 0) -> int:
    """A stopped router's state dir: `usage` then `audit` records in the outbox; their bytes."""

    async def fill() -> int:
        size = 0
        async with SqliteOutbox(state_dir / "outbox.sqlite", 10_000_000, "reject") as outbox:
            for n in range(usage + audit):
                topic: Topic = "usage" if n < usage else "audit"
                payload = json.dumps({"request_id": rid(n), "org": f"org-{n % 3}"}).encode()
                await outbox.append(topic, f"org-{n % 3}", rid(n), payload)
                size += len(payload)
        return size

    return asyncio.run(fill())


def inspect_json(state_dir: Path) -> dict[str, object]:
    result = cli("inspect", "--state-dir", str(state_dir), "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


def ids_in(path: Path) -> list[str]:
    return [json.loads(line)["request_id"] for line in path.read_text().splitlines()]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_inspect_table(state_dir: Path) -> None:
    """`inspect` prints the outbox path, then records, bytes and age per topic and in total."""
    size = prepare(state_dir, usage=8, audit=2)
    result = cli("inspect", "--state-dir", str(state_dir))
    assert result.returncode == 0, result.stderr
    first, header, *rows = result.stdout.splitlines()
    assert first == f"usage outbox {state_dir / 'outbox.sqlite'}"
    assert header.split() == ["TOPIC", "SINK", "RECORDS", "BYTES", "OLDEST"]
    assert [row.split()[:3] for row in rows[:2]] == [["usage", "file", "8"], ["audit", "none", "2"]]
    assert rows[2].split()[:3] == ["total", "10", str(size)]


def test_inspect_json(state_dir: Path) -> None:
    """`inspect --json` gives totals, the oldest record's age and per-topic counts."""
    size = prepare(state_dir, usage=5, audit=3)
    data = inspect_json(state_dir)
    assert (data["records"], data["bytes"]) == (8, size)
    assert isinstance(data["oldest_age_s"], float)
    assert 0 <= data["oldest_age_s"] < 60
    topics = data["topics"]
    assert isinstance(topics, dict)
    assert {t: v["records"] for t, v in topics.items()} == {"usage": 5, "audit": 3}


def test_inspect_finds_the_state_dir_in_the_config(state_dir: Path, tmp_path: Path) -> None:
    """With --config, the state dir is the config's state.dir."""
    prepare(state_dir, usage=4)
    config = tmp_path / "router.toml"
    config.write_text(f'[state]\ndir = "{state_dir}"\n')
    result = cli("inspect", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["records"] == 4


def test_replay_to_file(state_dir: Path, tmp_path: Path) -> None:
    """`replay --to file` writes every record in order and leaves the outbox empty; --limit
    replays the oldest N first."""
    prepare(state_dir, usage=30, audit=5)
    target = tmp_path / "out" / "usage.jsonl"
    result = cli("replay", "--state-dir", str(state_dir), "--to", "file", "--file", str(target),
                 "--limit", "10")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "replayed 10 of 10 records to file\n"
    assert inspect_json(state_dir)["records"] == 25
    result = cli("replay", "--state-dir", str(state_dir), "--to", "file", "--file", str(target))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "replayed 25 of 25 records to file\n"
    assert ids_in(target) == [rid(n) for n in range(35)]
    assert inspect_json(state_dir)["records"] == 0


def test_replay_to_stdout(state_dir: Path) -> None:
    """`replay --to stdout` prints only the records on stdout; the summary goes to stderr."""
    prepare(state_dir, usage=12)
    result = cli("replay", "--state-dir", str(state_dir), "--to", "stdout")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["request_id"] for line in result.stdout.splitlines()] == [
        rid(n) for n in range(12)
    ]
    assert result.stderr == "replayed 12 of 12 records to stdout\n"


def test_replay_dry_run_changes_nothing(state_dir: Path, tmp_path: Path) -> None:
    """`replay --dry-run` reports the count and neither writes the sink nor deletes a record."""
    prepare(state_dir, usage=20)
    target = tmp_path / "usage.jsonl"
    result = cli("replay", "--state-dir", str(state_dir), "--to", "file", "--file", str(target),
                 "--dry-run")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "dry run: 20 records would be replayed to file\n"
    assert not target.exists()
    assert inspect_json(state_dir)["records"] == 20


@pytest.fixture
def live_router_lock(state_dir: Path) -> Iterator[None]:
    """Another process holds the state dir's shared lock, as a serving router does."""
    script = (
        "import sys, pathlib\n"
        "from appliance.usage.state_lock import hold_shared\n"
        "with hold_shared(pathlib.Path(sys.argv[1])):\n"
        "    print('locked', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(state_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "locked\n"
        yield
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()


def test_replay_refuses_while_a_router_holds_the_dir(
    state_dir: Path, tmp_path: Path, live_router_lock: None
) -> None:
    """With the dir locked by a live router, replay exits 1 with one line and sends nothing;
    inspect still works."""
    prepare(state_dir, usage=5)
    target = tmp_path / "usage.jsonl"
    result = cli("replay", "--state-dir", str(state_dir), "--to", "file", "--file", str(target))
    assert result.returncode == 1
    line = one_error_line(result)
    assert "a router is serving from it" in line
    assert "--via-admin" in line
    assert not target.exists()
    assert inspect_json(state_dir)["records"] == 5


def test_missing_state_dir_and_outbox(tmp_path: Path) -> None:
    """A missing state dir, or one without an outbox file, is one error line and exit 1."""
    for command in ("inspect", "replay"):
        result = cli(command, "--state-dir", str(tmp_path / "nope"))
        assert result.returncode == 1
        assert "no such state directory" in one_error_line(result)
        result = cli(command, "--state-dir", str(tmp_path))
        assert result.returncode == 1
        assert "no usage outbox" in one_error_line(result)


def test_replay_kafka_unreachable(state_dir: Path) -> None:
    """With no broker at --bootstrap, replay exits 1 with one line and keeps every record."""
    prepare(state_dir, usage=7)
    address = f"127.0.0.1:{free_port()}"
    result = cli("replay", "--state-dir", str(state_dir), "--to", "kafka", "--bootstrap", address)
    assert result.returncode == 1
    line = one_error_line(result)
    assert f"kafka unreachable at {address}" in line
    assert "0 of 7 records replayed" in line
    assert inspect_json(state_dir)["records"] == 7


@pytest.mark.services
async def test_replay_to_kafka(state_dir: Path, kafka_broker: KafkaBroker) -> None:
    """`replay --to kafka` delivers every record to the topic with its org key and record id."""
    await asyncio.to_thread(prepare, state_dir, 9, 0)
    topic = f"replay-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, 1)
    result = await asyncio.to_thread(
        cli, "replay", "--state-dir", str(state_dir), "--to", "kafka",
        "--bootstrap", kafka_broker.bootstrap, "--topic", topic,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "replayed 9 of 9 records to kafka\n"
    got = await consume(kafka_broker.bootstrap, topic, 9)
    assert [dict(r.headers)["record_id"].decode() for r in got] == [rid(n) for n in range(9)]
    assert [r.key for r in got] == [f"org-{n % 3}".encode() for n in range(9)]
