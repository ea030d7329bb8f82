"""packaging/helm/routerctl: `helm lint --strict` passes, and what `helm template` renders is
valid Kubernetes (kubernetes-validate, strict schemas) that runs routerctl as DESIGN.md says."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from appliance.settings.loader import ConfigError, load_text
from tests import tools

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "packaging" / "helm" / "routerctl"
ALERTS = ROOT / "packaging" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "packaging" / "grafana" / "routerctl-dashboard.json"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest with schemas.
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
ALL_ON = {
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
}
POD_TMP = "/tmp"  # noqa: S108  (inside the pod, not this machine)
Doc = dict[str, Any]


@pytest.fixture(scope="module")
def helm() -> str:
    return str(tools.helm())


def helm_run(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, *args], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
    )


def values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def render(helm: str, tmp_path: Path, values: dict[str, Any], chart: Path = CHART) -> list[Doc]:
    """`helm template` the chart as release "rel" with these values; the rendered objects."""
    result = helm_run(helm, "template", "rel", str(chart), "-f", str(values_file(tmp_path, values)))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[Doc]) -> dict[str, list[Doc]]:
    kinds: dict[str, list[Doc]] = defaultdict(list)
    for doc in docs:
        kinds[doc["kind"]].append(doc)
    return kinds


def deployment(docs: list[Doc]) -> Doc:
    (found,) = by_kind(docs)["Deployment"]
    return found


def container(docs: list[Doc]) -> Doc:
    (found,) = deployment(docs)["spec"]["template"]["spec"]["containers"]
    return found


def router_toml(docs: list[Doc]) -> str:
    (config,) = [d for d in by_kind(docs)["ConfigMap"] if "router.toml" in d["data"]]
    text: str = config["data"]["router.toml"]
    return text


def test_lint_strict_with_defaults_and_every_option(helm: str, tmp_path: Path) -> None:
    """`helm lint --strict` passes with the default values and with every option on."""
    for extra in ([], ["-f", str(values_file(tmp_path, ALL_ON))]):
        result = helm_run(helm, "lint", "--strict", str(CHART), *extra)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 chart(s) failed" in result.stdout


def test_rendered_objects_are_valid_kubernetes(helm: str, tmp_path: Path) -> None:
    """Every object validates against the strict Kubernetes schemas (no unknown field) of
    the oldest and newest supported versions; the Prometheus Operator kinds are well formed."""
    docs = render(helm, tmp_path, ALL_ON)
    assert sorted(d["kind"] for d in docs) == [
        "ConfigMap", "ConfigMap", "Deployment", "PodDisruptionBudget", "PrometheusRule",
        "Service", "ServiceAccount", "ServiceMonitor",
    ]  # fmt: skip
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            assert doc["metadata"]["name"] == "rel-routerctl"
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_schema_validation_has_teeth() -> None:
    """A misspelt probe field is rejected by the same validation."""
    bad = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "i", "readinessprobe": {}}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBE_VERSIONS[0], strict=True)


def test_probes_listeners_and_drain(helm: str, tmp_path: Path) -> None:
    """Readiness asks readyz and liveness healthz on the port serve listens on; the admin API
    listens on the pod's loopback only (no container port), where the pod's ROUTERCTL_URL
    points; the pod's grace outlasts the preStop sleep plus the router's graceful_shutdown_s
    read from the TOML."""
    config = '[server]\ngraceful_shutdown_s = 50.5\n[[backends]]\nid = "a"\nurl = "http://a/v1"\n'
    config += '[[models]]\nname = "m"\nbackends = [{ backend = "a" }]\n'
    ports = {"http": 8181, "metrics": 9191, "admin": 8282}
    docs = render(helm, tmp_path, {"config": config, "ports": ports})
    main = container(docs)
    assert main["readinessProbe"]["httpGet"] == {"path": "/v1/status/readyz", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/v1/status/healthz", "port": "http"}
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"http": 8181, "metrics": 9191}
    args = main["args"]
    assert args[:3] == ["serve", "--config", "/etc/routerctl/router.toml"]
    assert args[args.index("--listen") + 1] == "0.0.0.0:8181"
    assert args[args.index("--metrics-listen") + 1] == "0.0.0.0:9191"
    assert args[args.index("--admin-listen") + 1] == "127.0.0.1:8282"
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["ROUTERCTL_URL"] == "http://127.0.0.1:8282"
    drain = tomllib.loads(router_toml(docs))["server"]["graceful_shutdown_s"]
    pre_stop = main["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop > 0
    grace = deployment(docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + drain


def test_grace_below_the_drain_fails_the_install(helm: str, tmp_path: Path) -> None:
    """An explicit terminationGracePeriodSeconds shorter than preStop + drain is refused."""
    path = values_file(tmp_path, {"terminationGracePeriodSeconds": 10})
    result = helm_run(helm, "template", "rel", str(CHART), "-f", str(path))
    assert result.returncode != 0
    assert "terminationGracePeriodSeconds=10 is below" in result.stderr


def test_config_map_carries_the_toml_and_secrets_feed_its_env(helm: str, tmp_path: Path) -> None:
    """The ConfigMap is the values' TOML verbatim (here the documented example), and the pod
    gets every variable it names (api_key_env, secret_headers) from the backend-keys Secret:
    routerctl's own loader resolves all its credentials from exactly those variables."""
    example = (ROOT / "config" / "router.example.toml").read_text()
    docs = render(helm, tmp_path, {"config": example})
    assert router_toml(docs) == example
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container(docs)["env"]
        if "valueFrom" in e
    }
    assert refs
    assert all(ref == {"name": "rel-routerctl-backend-keys", "key": n} for n, ref in refs.items())
    loaded = load_text(example, "router.toml", environ=dict.fromkeys(refs, "secret"))
    assert len(loaded.settings.backends) >= 1
    first, *others = refs
    with pytest.raises(ConfigError, match=first):
        load_text(example, "router.toml", environ=dict.fromkeys(others, "secret"))


def test_default_config_is_a_valid_router_config(helm: str, tmp_path: Path) -> None:
    """The chart's default TOML passes routerctl's own validation."""
    load_text(router_toml(render(helm, tmp_path, {})), "router.toml", environ={})


def test_monitoring_objects_come_from_the_shared_files(helm: str, tmp_path: Path) -> None:
    """PrometheusRule carries packaging/prometheus/alerts.yml's groups, the dashboard ConfigMap
    packaging/grafana's JSON, and the ServiceMonitor scrapes the Service's metrics port."""
    kinds = by_kind(render(helm, tmp_path, ALL_ON))
    (rule,) = kinds["PrometheusRule"]
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    (dashboard,) = [c for c in kinds["ConfigMap"] if "routerctl-dashboard.json" in c["data"]]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shown = json.loads(dashboard["data"]["routerctl-dashboard.json"])
    assert shown == json.loads(DASHBOARD.read_text())
    (monitor,) = kinds["ServiceMonitor"]
    (service,) = kinds["Service"]
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()


def test_absent_alert_and_dashboard_files_are_tolerated(helm: str, tmp_path: Path) -> None:
    """A chart whose files/ lacks alerts.yml and the dashboard renders without those objects."""
    chart = tmp_path / "routerctl"
    shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("alerts.yml", "*.json"))
    kinds = by_kind(render(helm, tmp_path, ALL_ON, chart=chart))
    assert "PrometheusRule" not in kinds
    assert len(kinds["ConfigMap"]) == 1  # the router config only
    assert "ServiceMonitor" in kinds


def test_selectors_and_disruption_budget(helm: str, tmp_path: Path) -> None:
    """Service and PodDisruptionBudget select the Deployment's pods; at most one is evicted."""
    docs = render(helm, tmp_path, {})
    pods = deployment(docs)["spec"]["template"]["metadata"]["labels"]
    (service,) = by_kind(docs)["Service"]
    (budget,) = by_kind(docs)["PodDisruptionBudget"]
    assert service["spec"]["selector"].items() <= pods.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= pods.items()
    assert budget["spec"]["maxUnavailable"] == 1
    assert "PodDisruptionBudget" not in by_kind(
        render(helm, tmp_path, {"podDisruptionBudget": {"enabled": False}})
    )


def test_pod_is_locked_down(helm: str, tmp_path: Path) -> None:
    """Non-root, read-only root filesystem, no capabilities, no API token; /tmp (where the
    one-file binary unpacks) and the state dir are writable volumes."""
    docs = render(helm, tmp_path, {})
    pod = deployment(docs)["spec"]["template"]["spec"]
    main = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert main["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    state_dir = tomllib.loads(router_toml(docs))["state"]["dir"]
    assert {POD_TMP, state_dir} <= mounts.keys()
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts[POD_TMP]]


SASL_SSL_KAFKA = """
[state]
dir = "/var/lib/routerctl"

[usage]
sink = "kafka"
kafka_bootstrap = ["kafka-0.kafka:9093"]
kafka_security_protocol = "SASL_SSL"
kafka_sasl_mechanism = "SCRAM-SHA-512"
kafka_username = "router"
kafka_password_env = "KAFKA_PASSWORD"
kafka_ssl_ca_file = "/etc/routerctl-tls/kafka-ca.pem"

[[backends]]
id = "vllm-a"
url = "http://vllm-a:8000/v1"
api_key_env = "VLLM_KEY"

[[models]]
name = "m"
backends = [{ backend = "vllm-a" }]
"""


def test_a_sasl_ssl_kafka_gets_its_password_and_ca_file(helm: str, tmp_path: Path) -> None:
    """A SASL_SSL Kafka sink: the pod gets kafka_password_env from the Secret beside the
    backend keys, and the CA file the config names from the extra volume mounted read-only."""
    docs = render(
        helm,
        tmp_path,
        {
            "config": SASL_SSL_KAFKA,
            "extraVolumes": [{"name": "kafka-tls", "secret": {"secretName": "kafka-tls"}}],
            "extraVolumeMounts": [
                {"name": "kafka-tls", "mountPath": "/etc/routerctl-tls", "readOnly": True}
            ],
        },
    )
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["key"]
        for e in container(docs)["env"]
        if "valueFrom" in e
    }
    assert refs == {"VLLM_KEY": "VLLM_KEY", "KAFKA_PASSWORD": "KAFKA_PASSWORD"}
    mounts = {m["name"]: m for m in container(docs)["volumeMounts"]}
    assert mounts["kafka-tls"] == {
        "name": "kafka-tls",
        "mountPath": "/etc/routerctl-tls",
        "readOnly": True,
    }
    volumes = {v["name"]: v for v in deployment(docs)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["kafka-tls"]["secret"] == {"secretName": "kafka-tls"}


def test_redis_cluster_password_comes_from_the_secret(helm: str, tmp_path: Path) -> None:
    """A config pointing at a Redis Cluster gets the variable redis_password_env names from
    the Secret, and the rendered TOML loads with it (and only with it)."""
    config = (
        '[state]\ndir = "/var/lib/routerctl"\nredis_mode = "cluster"\n'
        'redis_endpoints = ["redis-0:6379", "redis-1:6379"]\n'
        'redis_username = "routerctl"\nredis_password_env = "REDIS_PASSWORD"\n'
        '# redis_password_env = "COMMENTED_OUT"\n'
    )
    docs = render(helm, tmp_path, {"config": config})
    refs = {e["name"] for e in container(docs)["env"] if "valueFrom" in e}
    assert refs == {"REDIS_PASSWORD"}
    toml = router_toml(docs)
    assert load_text(toml, "router.toml", {"REDIS_PASSWORD": "x"}).settings.state.redis_mode == (
        "cluster"
    )
    with pytest.raises(ConfigError, match="REDIS_PASSWORD is not set"):
        load_text(toml, "router.toml", {})
