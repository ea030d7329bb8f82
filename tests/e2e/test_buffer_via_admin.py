"""`routerctl buffer inspect|replay --via-admin` against a running router whose Kafka is down."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import urllib.request
import uuid
from pathlib import Path

from appliance.auth.keyring import hash_key
from tests.e2e.cli import router_process, routerctl_command
from tests.integration.test_usage_sinks import consume
from tests.services import KafkaBroker

OPERATOR = "rka-e2e-operator-token"
VIEWER = "rka-e2e-viewer-token"
ORG_KEY = "rk-e2e-buffer-key"


def config(tmp: Path, mock_url: str, bootstrap: str, topic: str) -> Path:
    path = tmp / "router.toml"
    path.write_text(
        f"""
[server]
metrics_listen = ""

[state]
dir = "{tmp / "state"}"

[admin]
tokens = [
    {{ id = "oncall", sha256 = "{hash_key(OPERATOR)}", role = "operator" }},
    {{ id = "watcher", sha256 = "{hash_key(VIEWER)}", role = "viewer" }},
]

[usage]
sink = "kafka"
kafka_bootstrap = ["{bootstrap}"]
kafka_topic = "{topic}"

[[backends]]
id = "mock"
url = "{mock_url}"

[[models]]
name = "m"
backends = [{{ backend = "mock" }}]

[[orgs]]
id = "acme"

[[keys]]
id = "k"
org = "acme"
sha256 = "{hash_key(ORG_KEY)}"
"""
    )
    return path


def cli(url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTERCTL_") and k != "COLUMNS"}
    env.update(ROUTERCTL_URL=url, ROUTERCTL_TOKEN=token)
    return subprocess.run(
        [*routerctl_command(), "buffer", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def chat(url: str) -> str:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = urllib.request.Request(  # noqa: S310 - a loopback test URL
        f"{url}/v1/chat/completions",
        data=body,
        headers={"authorization": f"Bearer {ORG_KEY}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        response.read()
        return str(response.headers["x-request-id"])


def test_inspect_and_replay_through_a_running_router(
    mock_url: str, tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    """Kafka down: records wait and inspect shows them and the failing publisher; replay
    fails with one line and keeps them; Kafka back: replay publishes every one, once."""
    topic = f"via-admin-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, 1)
    kafka_broker.stop()
    path = config(tmp_path, mock_url, kafka_broker.bootstrap, topic)
    with router_process(["--config", str(path)], tmp_path) as router:
        ids = [chat(router.url) for _ in range(5)]

        shown = cli(router.admin_url, VIEWER, "inspect", "--via-admin", "--json")
        assert shown.returncode == 0, shown.stderr
        report = json.loads(shown.stdout)
        assert report["records"] == 5
        assert report["topics"]["usage"]["sink"] == "kafka"
        assert report["sinks"]["kafka"]["records"] == 5

        table = cli(router.admin_url, VIEWER, "inspect", "--via-admin")
        assert table.returncode == 0, table.stderr
        assert table.stdout.splitlines()[1].split() == [
            "TOPIC",
            "SINK",
            "RECORDS",
            "BYTES",
            "OLDEST",
        ]

        refused = cli(router.admin_url, VIEWER, "replay", "--via-admin")
        assert refused.returncode == 1
        assert "operator" in refused.stderr

        dry = cli(router.admin_url, OPERATOR, "replay", "--via-admin", "--dry-run", "--limit", "3")
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.strip() == "dry run: 3 records would be replayed to kafka"

        down = cli(router.admin_url, OPERATOR, "replay", "--via-admin")
        assert down.returncode == 1
        assert len(down.stderr.splitlines()) == 1
        assert "stay in the outbox" in down.stderr

        offline = cli(router.admin_url, OPERATOR, "replay", "--state-dir", str(tmp_path / "state"))
        assert offline.returncode == 1
        assert "--via-admin" in offline.stderr

        kafka_broker.start()
        done = cli(router.admin_url, OPERATOR, "replay", "--via-admin")
        assert done.returncode == 0, done.stderr
        # The background publisher may have sent some of them first: together, all five.
        assert done.stdout.strip().endswith("through the router; 0 still buffered")
        after = json.loads(cli(router.admin_url, VIEWER, "inspect", "--via-admin", "--json").stdout)
        assert after["records"] == 0
        assert after["publishing"]["consecutive_failures"] == 0
    records = [json.loads(r.value) for r in asyncio.run(consume(kafka_broker.bootstrap, topic, 5))]
    assert sorted(r["request_id"] for r in records) == sorted(ids)


def test_via_admin_refuses_sink_options(tmp_path: Path) -> None:
    """--via-admin publishes to the router's own sink: --to and friends are a usage error."""
    result = cli("http://127.0.0.1:9", OPERATOR, "replay", "--via-admin", "--to", "stdout")
    assert result.returncode == 2
    assert "--via-admin publishes to the running router's own sink" in result.stderr
