"""The runbooks' routing policy update and config service connectivity, with etcd: a router
following a real etcd, policy pushed with `routerctl config push` (dry run, push, roll back),
a document routers refuse (RouterConfigRejected) found and fixed, and etcd going away and
coming back (RouterEtcdUnreachable)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.auth.keyring import hash_key
from appliance.configsvc.etcd_client import EtcdClient
from tests.e2e.cli import router_process, run_cli
from tests.e2e.test_runbook_drills import (
    ACME_KEY,
    MODEL,
    OPERATOR,
    MockBackend,
    Router,
    chat,
    metric_lines,
    readyz,
    wait_for,
)
from tests.services import EtcdServer, free_port

pytestmark = pytest.mark.services


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[dict[str, MockBackend]]:
    mocks = {name: MockBackend(tmp_path, name) for name in ("vllm-a", "vllm-b")}
    try:
        for mock in mocks.values():
            mock.start()
        yield mocks
    finally:
        for mock in mocks.values():
            mock.stop()


def policy(path: Path, backends: dict[str, MockBackend], *, weight_b: float = 1.0) -> Path:
    """The push file of the runbook: backends, models, orgs and keys only."""
    path.write_text(
        f"""[[backends]]
id = "vllm-a"
url = "{backends["vllm-a"].url}/v1"

[[backends]]
id = "vllm-b"
url = "{backends["vllm-b"].url}/v1"
weight = {weight_b}

[[models]]
name = "{MODEL}"
backends = [{{ backend = "vllm-a" }}, {{ backend = "vllm-b" }}]

[[orgs]]
id = "acme"

[[keys]]
id = "acme-prod"
org = "acme"
sha256 = "{hash_key(ACME_KEY)}"
"""
    )
    return path


@pytest.fixture
def fleet(
    etcd: EtcdServer, backends: dict[str, MockBackend], tmp_path: Path
) -> Iterator[tuple[Router, str]]:
    """A router whose policy lives in etcd under a fresh prefix, pushed before it starts."""
    prefix = f"/runbook-{uuid.uuid4().hex[:8]}/"
    config = tmp_path / "router.toml"
    config.write_text(
        f"""
[server]
graceful_shutdown_s = 2

[state]
dir = "{tmp_path / "state"}"

[config_service]
etcd_endpoints = ["{etcd.url}"]
prefix = "{prefix}"
timeout_s = 1.0

[[admin.tokens]]
id = "oncall"
sha256 = "{hash_key(OPERATOR)}"
role = "operator"

[routing]
health_interval_s = 0.3
"""
    )
    pushed = policy(tmp_path / "p.toml", backends)
    first = run_cli("config", "push", str(pushed), "--config", str(config))
    assert first.returncode == 0, first.stderr
    metrics = f"127.0.0.1:{free_port()}"
    with router_process(
        ["--config", str(config), "--metrics-listen", metrics], tmp_path
    ) as running:
        yield Router(running, config, f"http://{metrics}"), prefix


def test_push_dry_run_push_and_roll_back(
    fleet: tuple[Router, str], backends: dict[str, MockBackend], tmp_path: Path
) -> None:
    """The runbook's steps: dry run prints the diff and writes nothing; push applies on the
    router within a second; the same file again is `no changes`; pushing the previous file
    rolls back."""
    router, prefix = fleet
    previous = policy(tmp_path / "policy-previous.toml", backends)
    edited = policy(tmp_path / "policy.toml", backends, weight_b=0.5)

    def push(path: Path, *extra: str) -> str:
        return router.ok("config", "push", str(path), "--config", str(router.config), *extra)

    dry = push(edited, "--dry-run").splitlines()
    assert dry[:2] == ["~ backends/vllm-b", "    weight: 1.0 -> 0.5"]
    assert dry[2].startswith(
        f"dry run: 1 change (0 added, 1 changed, 0 deleted) not written ({prefix} at revision "
    )
    assert router.row("vllm-b")[2] == "1"

    pushed = push(edited).splitlines()
    assert pushed[:2] == dry[:2]
    revision = int(pushed[2].rsplit(" ", 1)[1])
    assert pushed[2] == (
        f"pushed 1 change (0 added, 1 changed, 0 deleted) to {prefix} at revision {revision}"
    )
    wait_for(lambda: router.row("vllm-b")[2:4] == ["0.5", "0.5"], "the new weight", timeout=5)
    assert f"router_config_revision {float(revision)}" in metric_lines(
        router.metrics_url, r"^router_config_revision"
    )
    assert push(edited) == f"no changes ({prefix} at revision {revision})\n"

    assert push(previous, "--dry-run").splitlines()[:2] == [
        "~ backends/vllm-b",
        "    weight: 0.5 -> 1.0",
    ]
    assert push(previous).splitlines()[-1].startswith("pushed 1 change ")
    wait_for(lambda: router.row("vllm-b")[2:4] == ["1", "1"], "the rolled-back weight", timeout=5)
    assert chat(router)[0] == 200


def test_a_rejected_document_is_found_and_fixed_by_pushing_the_good_file(
    fleet: tuple[Router, str], etcd: EtcdServer, backends: dict[str, MockBackend], tmp_path: Path
) -> None:
    """A model document naming an unknown backend, written by hand: the router keeps its
    config and counts a rejection; `audit lookup --kind config.reject` and `config show` name
    it; pushing the file from version control replaces it."""
    router, prefix = fleet

    async def put_bad() -> None:
        async with EtcdClient([etcd.url], timeout_s=5) as client:
            await client.put(f"{prefix}models/{MODEL}", b'{"backends": [{"backend": "nope"}]}')

    asyncio.run(put_bad())
    reason = f"models/{MODEL}.backends[0].backend: unknown backend 'nope'"
    lookup = ("audit", "lookup", "--kind", "config.reject", "--since", "1h")
    wait_for(lambda: reason in router.ok(*lookup), "the config.reject audit event", timeout=5)
    assert 'router_config_applies_total{result="rejected"} 1.0' in metric_lines(
        router.metrics_url, r"^router_config_applies_total\{"
    )
    assert chat(router)[0] == 200  # the previous config keeps serving

    shown = run_cli("config", "show", str(router.config))
    assert shown.returncode == 1
    assert shown.stderr == (
        "routerctl: warning: routers refuse this (they keep their last good version): "
        f"{prefix}{reason}\n"
    )

    fixed = router.ok(
        "config", "push", str(policy(tmp_path / "policy.toml", backends)),
        "--config", str(router.config),
    ).splitlines()  # fmt: skip
    assert fixed[:2] == [f"~ models/{MODEL}", '    backends[0].backend: "nope" -> "vllm-a"']
    assert run_cli("config", "show", str(router.config)).returncode == 0


def config_service(router: Router) -> object:
    components = readyz(router)[1]["components"]
    assert isinstance(components, dict)
    return components["config_service"]


def test_etcd_unreachable_serves_from_the_cache_until_it_is_back(
    fleet: tuple[Router, str], etcd: EtcdServer, backends: dict[str, MockBackend], tmp_path: Path
) -> None:
    """etcd stopped: requests are served, readiness names the cache, the source metric says
    cache, overrides and pushes are refused, doctor fails the etcd row. etcd back: the router
    reconnects by itself."""
    router, prefix = fleet
    etcd.stop()
    try:
        wait_for(lambda: config_service(router) == "unhealthy", "config_service unhealthy")
        details = readyz(router)[1]["details"]
        assert isinstance(details, dict)
        assert details["config_service"].startswith(
            "etcd unreachable; serving the last-known-good config (revision "
        )
        assert metric_lines(router.metrics_url, r"^router_config_source\{") == [
            'router_config_source{source="file"} 0.0',
            'router_config_source{source="etcd"} 0.0',
            'router_config_source{source="cache"} 1.0',
        ]
        assert chat(router)[0] == 200

        degrade = router.cli("backend", "degrade", "vllm-b", "--weight", "0.5", "--reason", "x")
        assert degrade.returncode == 1
        assert degrade.stderr.startswith(
            "routerctl: error: router answered HTTP 503 store_unavailable: "
        )
        pushed = router.cli("config", "push", str(policy(tmp_path / "p2.toml", backends)),
                            "--config", str(router.config), "--dry-run")  # fmt: skip
        assert pushed.returncode == 1
        assert pushed.stderr.startswith(
            f"routerctl: error: cannot read the config under {prefix} from etcd: "
        )
        doctor = router.cli("doctor", "--config", str(router.config), "--json", "--timeout", "1")
        assert doctor.returncode == 1
        rows = [r for r in json.loads(doctor.stdout) if r["check"] == "etcd"]
        assert [(r["target"], r["status"]) for r in rows] == [(etcd.url, "fail")]
        assert rows[0]["fix"].startswith(f"start etcd at {etcd.url}")
    finally:
        etcd.start()
    wait_for(
        lambda: (
            'router_config_source{source="etcd"} 1.0'
            in metric_lines(router.metrics_url, r"^router_config_source\{")
        ),
        "the watch live again",
    )
    assert config_service(router) == "healthy"
    again = router.cli("backend", "degrade", "vllm-b", "--weight", "0.5", "--reason", "x")
    assert again.returncode == 0, again.stderr
