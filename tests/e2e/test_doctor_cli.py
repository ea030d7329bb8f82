"""`routerctl doctor` as an operator runs it, against real valkey, Tansu, etcd and mock
backends."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from appliance.limits.redis_store import BUCKET_LUA
from appliance.usage.sqlite_outbox import SqliteOutbox
from tests.e2e.cli import mock_backend_process, router_process, run_cli
from tests.services import EtcdServer, KafkaBroker, RedisServer, free_port

ROW_KEYS = {"check", "target", "status", "detail", "fix"}
STATUSES = {"pass", "warn", "fail", "skip"}
Row = dict[str, str]


@pytest.fixture(scope="module")
def backend_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `routerctl mock-backend` process serving model "demo"; its base URL with /v1."""
    with mock_backend_process(tmp_path_factory.mktemp("mock")) as url:
        yield url


def config_service(etcd: EtcdServer) -> str:
    return f'[config_service]\netcd_endpoints = ["{etcd.url}"]\nprefix = "/doctor/"'


@pytest.fixture
def topics(kafka_broker: KafkaBroker) -> tuple[str, str]:
    """Fresh usage and audit topics on the broker."""
    prefix = f"doctor-{uuid.uuid4().hex[:8]}"
    names = (f"{prefix}.usage", f"{prefix}.audit")
    for name in names:
        kafka_broker.create_topic(name, partitions=2)
    return names


def config(
    tmp: Path,
    *,
    backends: dict[str, str],
    state_dir: Path | str | None = None,
    redis_url: str = "",
    bootstrap: str = "",
    topics: tuple[str, str] = ("routerctl.usage", "routerctl.audit"),
    listen: str | None = None,
    extra: str = "",
) -> Path:
    """A router config naming these services; listeners on free ports unless given."""
    lines = [
        "[server]",
        f'listen = "{listen or f"127.0.0.1:{free_port()}"}"',
        f'metrics_listen = "127.0.0.1:{free_port()}"',
        f'admin_listen = "127.0.0.1:{free_port()}"',
        "[state]",
        f'dir = "{state_dir if state_dir is not None else tmp / "state"}"',
        f'redis_url = "{redis_url}"',
        "[usage]",
    ]
    if bootstrap:
        lines += [
            'sink = "kafka"',
            f'kafka_bootstrap = ["{bootstrap}"]',
            f'kafka_topic = "{topics[0]}"',
            f'kafka_audit_topic = "{topics[1]}"',
        ]
    else:
        lines.append('sink = "file"')
    for backend_id, url in backends.items():
        lines += ["[[backends]]", f'id = "{backend_id}"', f'url = "{url}"']
    routes = ", ".join(f'{{backend = "{b}", upstream_model = "demo"}}' for b in backends)
    lines += ["[[models]]", 'name = "chat"', f"backends = [{routes}]", extra]
    path = tmp / f"router-{uuid.uuid4().hex[:6]}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def doctor(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("doctor", "--config", str(path), *args)


def doctor_json(path: Path, *args: str) -> tuple[int, list[Row]]:
    """Exit code and rows of `doctor --json`, with the shape of every row checked."""
    result = doctor(path, "--json", "--timeout", "1", *args)
    assert result.returncode in (0, 1), result.stderr
    rows: list[Row] = json.loads(result.stdout)
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["status"] in STATUSES
        assert (row["fix"] == "") == (row["status"] in ("pass", "skip")), row
    return result.returncode, rows


def row(rows: list[Row], check: str, target: str | None = None) -> Row:
    found = [r for r in rows if r["check"] == check and target in (None, r["target"])]
    assert len(found) == 1, (check, target, rows)
    return found[0]


def load_bucket_script(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.script_load(BUCKET_LUA)
    finally:
        client.close()


def test_everything_up_every_check_passes(
    *,
    redis_server: RedisServer,
    kafka_broker: KafkaBroker,
    etcd: EtcdServer,
    topics: tuple[str, str],
    backend_url: str,
    tmp_path: Path,
) -> None:
    """With Redis, Kafka (both topics), etcd and two live backends, every row passes and
    doctor exits 0 with nothing on stderr."""
    load_bucket_script(redis_server.url)
    path = config(
        tmp_path,
        backends={"gpu-a": backend_url, "gpu-b": backend_url},
        redis_url=redis_server.url,
        bootstrap=kafka_broker.bootstrap,
        topics=topics,
        extra=config_service(etcd),
    )
    result = doctor(path, "--json")
    assert result.returncode == 0, result.stdout
    assert result.stderr == ""
    rows: list[Row] = json.loads(result.stdout)
    assert [r for r in rows if r["status"] != "pass"] == []
    assert re.fullmatch(
        r"etcd 3\.5\.\d+, revision \d+, db [\d.]+ MB", row(rows, "etcd", etcd.url)["detail"]
    )
    assert [(r["check"], r["target"]) for r in rows] == [
        ("config", str(path)),
        ("redis", f"127.0.0.1:{redis_server.port}"),
        ("redis.script", f"127.0.0.1:{redis_server.port}"),
        ("clock", f"127.0.0.1:{redis_server.port}"),
        ("kafka", kafka_broker.bootstrap),
        ("kafka.topic", topics[0]),
        ("kafka.topic", topics[1]),
        ("etcd", etcd.url),
        ("backend", "gpu-a"),
        ("backend", "gpu-b"),
        ("state_dir", str(tmp_path / "state")),
        ("disk", str(tmp_path / "state")),
        ("outbox", str(tmp_path / "state" / "outbox.sqlite")),
        ("listen", rows[-3]["target"]),
        ("admin_listen", rows[-2]["target"]),
        ("metrics_listen", rows[-1]["target"]),
    ]
    assert "2 partitions" in row(rows, "kafka.topic", topics[0])["detail"]


def test_table_lists_each_check_with_its_status_and_a_summary(
    backend_url: str, tmp_path: Path
) -> None:
    """Without --json: a header, one row per check, then a summary line; services that are
    not configured are skipped, which is no failure."""
    result = doctor(config(tmp_path, backends={"gpu-a": backend_url}))
    assert result.returncode == 0, result.stdout + result.stderr
    header, *rows, summary = result.stdout.splitlines()
    assert header.split() == ["CHECK", "TARGET", "STATUS", "DETAIL", "FIX"]
    statuses = {line.split()[0]: line.split()[2] for line in rows}
    assert statuses == {
        "config": "pass",
        "redis": "skip",
        "kafka": "skip",
        "etcd": "skip",
        "backend": "pass",
        "state_dir": "pass",
        "disk": "pass",
        "outbox": "pass",
        "listen": "pass",
        "admin_listen": "pass",
        "metrics_listen": "pass",
    }
    assert summary == "doctor: ok: 8 pass, 3 skip"


def test_redis_down_fails_with_the_fix(
    redis_server: RedisServer, backend_url: str, tmp_path: Path
) -> None:
    """Redis stopped: the redis row fails saying where to start it, its dependent rows are
    skipped, and doctor exits 1."""
    path = config(tmp_path, backends={"gpu-a": backend_url}, redis_url=redis_server.url)
    redis_server.stop()
    code, rows = doctor_json(path)
    assert code == 1
    redis_row = row(rows, "redis")
    assert redis_row["status"] == "fail"
    assert "unreachable" in redis_row["detail"]
    assert redis_row["fix"] == (
        f"start Redis at 127.0.0.1:{redis_server.port}, or point state.redis_url at a running one"
    )
    assert (row(rows, "redis.script")["status"], row(rows, "clock")["status"]) == ("skip", "skip")
    assert [r["check"] for r in rows if r["status"] == "fail"] == ["redis"]


def test_redis_without_the_bucket_script_warns(
    redis_server: RedisServer, backend_url: str, tmp_path: Path
) -> None:
    """A Redis no router has used since it started lacks the token-bucket script: a warning,
    and warnings alone exit 0."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.script_flush()
    finally:
        client.close()
    code, rows = doctor_json(
        config(tmp_path, backends={"gpu-a": backend_url}, redis_url=redis_server.url)
    )
    assert code == 0
    script = row(rows, "redis.script")
    assert script["status"] == "warn"
    assert "not loaded" in script["detail"]
    assert row(rows, "clock")["status"] == "pass"


def test_etcd_down_fails_with_the_fix(etcd: EtcdServer, backend_url: str, tmp_path: Path) -> None:
    """etcd stopped: the etcd row fails naming the endpoint, says routers run on their cache,
    and gives the fix; nothing else fails, doctor exits 1."""
    path = config(tmp_path, backends={"gpu-a": backend_url}, extra=config_service(etcd))
    etcd.stop()
    code, rows = doctor_json(path)
    assert code == 1
    etcd_row = row(rows, "etcd", etcd.url)
    assert etcd_row["status"] == "fail"
    assert etcd_row["detail"].endswith("; routers run on their cache"), etcd_row
    assert etcd_row["fix"] == f"start etcd at {etcd.url}, or fix the config service's endpoints"
    assert [r["check"] for r in rows if r["status"] == "fail"] == ["etcd"]


def test_etcd_password_variable_unset_fails_both_rows(
    etcd: EtcdServer, backend_url: str, tmp_path: Path
) -> None:
    """[config_service] naming a password variable that is not set: the config row and the
    etcd row fail, neither shows a value, and etcd is not asked."""
    variable = f"DOCTOR_ETCD_PW_{uuid.uuid4().hex[:6].upper()}"
    extra = config_service(etcd) + f'\nusername = "router"\npassword_env = "{variable}"'
    code, rows = doctor_json(config(tmp_path, backends={"gpu-a": backend_url}, extra=extra))
    assert code == 1
    expected = f"config_service.password_env: environment variable {variable} is not set"
    assert row(rows, "config")["detail"].endswith(expected)
    assert row(rows, "etcd", "-")["detail"] == expected
    assert row(rows, "etcd", "-")["status"] == "fail"


def test_kafka_refusing_fails(backend_url: str, tmp_path: Path) -> None:
    """No broker at the bootstrap address: the kafka row fails with the fix, topics are not
    checked."""
    dead = f"127.0.0.1:{free_port()}"
    code, rows = doctor_json(config(tmp_path, backends={"gpu-a": backend_url}, bootstrap=dead))
    assert code == 1
    kafka = row(rows, "kafka", dead)
    assert kafka["status"] == "fail"
    assert kafka["fix"].startswith("start the brokers or fix usage.kafka_bootstrap")
    assert {r["status"] for r in rows if r["check"] == "kafka.topic"} == {"skip"}


def test_kafka_hung_fails_within_the_timeout(
    kafka_broker: KafkaBroker, topics: tuple[str, str], backend_url: str, tmp_path: Path
) -> None:
    """A frozen broker (SIGSTOP) costs one --timeout: the kafka row fails as not answering."""
    path = config(
        tmp_path, backends={"gpu-a": backend_url}, bootstrap=kafka_broker.bootstrap, topics=topics
    )
    kafka_broker.pause()
    code, rows = doctor_json(path)
    assert code == 1
    kafka = row(rows, "kafka")
    assert kafka["status"] == "fail"
    assert kafka["detail"].startswith("no answer within 1 s")


def test_a_backend_down_fails_naming_it(backend_url: str, tmp_path: Path) -> None:
    """A backend nobody listens for, and one whose health path is wrong, fail by id; the live
    one passes."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    extra = '[[backends]]\nid = "gpu-c"\nurl = "' + backend_url + '"\nhealth_path = "/missing"'
    path = config(tmp_path, backends={"gpu-a": backend_url, "gpu-b": dead}, extra=extra)
    code, rows = doctor_json(path)
    assert code == 1
    assert row(rows, "backend", "gpu-a")["status"] == "pass"
    down = row(rows, "backend", "gpu-b")
    assert down["status"] == "fail"
    assert "cannot connect: Connection refused" in down["detail"]
    assert down["fix"] == f"start the backend gpu-b or fix backends.url ({dead})"
    wrong = row(rows, "backend", "gpu-c")
    assert (wrong["status"], wrong["detail"]) == ("fail", "health /missing answered 404")


def test_a_backend_not_listing_the_routed_model_warns(backend_url: str, tmp_path: Path) -> None:
    """A backend whose /models lacks the upstream model the router would ask for warns."""
    path = config(tmp_path, backends={"gpu-a": backend_url})
    path.write_text(path.read_text().replace('upstream_model = "demo"', 'upstream_model = "x"'))
    code, rows = doctor_json(path)
    assert code == 0
    backend = row(rows, "backend", "gpu-a")
    assert backend["status"] == "warn"
    assert backend["detail"].endswith("/models does not list x")


@pytest.mark.parametrize("where", ["is a file", "under a file"])
def test_state_dir_that_cannot_be_written_fails(
    where: str, backend_url: str, tmp_path: Path
) -> None:
    """A state dir that is a file, or would have to be created under one, fails the
    state_dir row."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    state_dir = blocker if where == "is a file" else blocker / "state"
    code, rows = doctor_json(config(tmp_path, backends={"gpu-a": backend_url}, state_dir=state_dir))
    assert code == 1
    state = row(rows, "state_dir", str(state_dir))
    assert state["status"] == "fail"
    assert state["detail"] == f"{blocker} is not a directory"
    assert "set state.dir" in state["fix"]


def fill_outbox(state_dir: Path, records: int, payload_bytes: int, age_s: float) -> None:
    """A stopped router's outbox holding `records` records written `age_s` seconds ago."""

    def clock() -> float:
        return time.time() - age_s

    async def fill() -> None:
        path = state_dir / "outbox.sqlite"
        async with SqliteOutbox(path, 10_000_000, "reject", clock=clock) as outbox:
            for n in range(records):
                await outbox.append("usage", "org", f"r{n}", b"x" * payload_bytes)

    asyncio.run(fill())


def test_an_old_outbox_backlog_warns(backend_url: str, tmp_path: Path) -> None:
    """Records waiting for an hour: the outbox row warns with their count and age."""
    fill_outbox(tmp_path / "state", records=3, payload_bytes=100, age_s=3600)
    code, rows = doctor_json(config(tmp_path, backends={"gpu-a": backend_url}))
    assert code == 0
    outbox = row(rows, "outbox")
    assert outbox["status"] == "warn"
    assert outbox["detail"].startswith("3 records,")
    assert re.search(r", oldest 3,6\d\d s old$", outbox["detail"]), outbox["detail"]


def test_a_nearly_full_outbox_fails(backend_url: str, tmp_path: Path) -> None:
    """An outbox at 90 % of usage.max_buffer_mb fails: on_full is about to apply."""
    fill_outbox(tmp_path / "state", records=10, payload_bytes=100, age_s=0)
    path = config(tmp_path, backends={"gpu-a": backend_url})
    path.write_text(
        path.read_text().replace('sink = "file"', 'sink = "file"\nmax_buffer_mb = 0.001')
    )
    code, rows = doctor_json(path)
    assert code == 1
    outbox = row(rows, "outbox")
    assert outbox["status"] == "fail"
    assert "95% of usage.max_buffer_mb" in outbox["detail"]


def test_a_running_router_holds_its_listeners_and_state(backend_url: str, tmp_path: Path) -> None:
    """Against a live router, its listeners count as reachable and its outbox is read while
    it holds the state dir."""
    serving = config(tmp_path, backends={"gpu-a": backend_url})
    with router_process(["--config", str(serving)], tmp_path) as router:
        text = serving.read_text()
        listen = text.split('listen = "', 1)[1].split('"', 1)[0]
        admin = text.split('admin_listen = "', 1)[1].split('"', 1)[0]
        text = text.replace(listen, f"127.0.0.1:{router.port}", 1)
        path = tmp_path / "doctor.toml"
        path.write_text(text.replace(admin, f"127.0.0.1:{router.admin_port}", 1))
        code, rows = doctor_json(path)
    assert code == 0, rows
    assert row(rows, "listen")["detail"].startswith("in use by a running router (healthz answered")
    assert row(rows, "admin_listen")["detail"].startswith("in use by a running router (healthz")
    assert (
        row(rows, "metrics_listen")["detail"] == "in use by a running router (its metrics answer)"
    )
    assert row(rows, "outbox")["status"] == "pass"


def test_a_listener_held_by_another_program_fails(backend_url: str, tmp_path: Path) -> None:
    """A port held by something that does not answer like a router fails with how to find it."""
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        path = config(tmp_path, backends={"gpu-a": backend_url}, listen=f"127.0.0.1:{port}")
        code, rows = doctor_json(path)
    assert code == 1
    listen = row(rows, "listen")
    assert listen["status"] == "fail"
    assert listen["fix"].startswith(f"stop what holds port {port} (ss -ltnp")


def test_a_missing_backend_secret_fails_the_config_row(backend_url: str, tmp_path: Path) -> None:
    """A backend's api_key_env unset is a failed config row (file:line: key: reason), and every
    other check still runs."""
    path = config(tmp_path, backends={"gpu-a": backend_url})
    variable = f"DOCTOR_TEST_KEY_{uuid.uuid4().hex[:6].upper()}"
    path.write_text(
        path.read_text().replace('id = "gpu-a"', f'id = "gpu-a"\napi_key_env = "{variable}"')
    )
    code, rows = doctor_json(path)
    assert code == 1
    row_ = row(rows, "config")
    assert row_["status"] == "fail"
    assert row_["detail"].endswith(
        f"backends[0].api_key_env: environment variable {variable} is not set"
    )
    assert row(rows, "backend", "gpu-a")["status"] == "pass"


def test_an_invalid_config_exits_2_with_one_line(tmp_path: Path) -> None:
    """A config that does not validate exits 2 with one `file:line: key: reason` line."""
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nlisten = "nowhere"\n')
    result = doctor(path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}:2: server.listen: expected HOST:PORT, got 'nowhere'"
    ]


@pytest.mark.parametrize("args", [["--config", "/nonexistent/router.toml"], []])
def test_no_config_file_exits_2_with_one_line(args: list[str]) -> None:
    """A missing file, or no --config at all, is a usage error: one line, exit 2."""
    result = run_cli("doctor", *args, env={"ROUTERCTL_CONFIG": ""})
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("routerctl: error: ")
