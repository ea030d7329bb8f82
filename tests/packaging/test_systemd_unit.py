"""packaging/systemd/routerctl.service: systemd accepts it as written, and it keeps the
promises docs/install-vm.md makes (reload by SIGHUP, restart on failure, state dir, hardening)."""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from appliance.settings import ServerSettings
from tests import tools

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "systemd" / "routerctl.service"
INSTALLED_BINARY = "/usr/local/bin/routerctl"


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    return str(tools.debian_tool("systemd-analyze", "systemd"))


def unit_for_verify(tmp_path: Path, text: str) -> Path:
    """The unit with the binary path pointing at a stub: verify checks that it exists."""
    stub = tmp_path / "routerctl"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    path = tmp_path / "routerctl.service"
    path.write_text(text.replace(INSTALLED_BINARY, str(stub)))
    return path


def verify(analyze: str, unit: Path) -> str:
    """Everything `systemd-analyze verify` says about the unit; "" when it is clean."""
    # verify exits 0 on unknown keys and bad values (it only warns), so its words count too.
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    return (result.stdout + result.stderr + ("" if result.returncode == 0 else "failed")).strip()


def directives(text: str) -> dict[str, list[str]]:
    """[Section]Key -> its values in order (Exec* and filters may repeat)."""
    found: dict[str, list[str]] = defaultdict(list)
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        found[f"{section}{key}"].append(value)
    return found


def test_systemd_analyze_verify_is_clean(systemd_analyze: str, tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit without a single warning."""
    assert verify(systemd_analyze, unit_for_verify(tmp_path, UNIT.read_text())) == ""


def test_verify_catches_a_mistyped_directive(systemd_analyze: str, tmp_path: Path) -> None:
    """The check above has teeth: a misspelt hardening key or a bad Restart= value is reported."""
    typo = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict")
    said = verify(systemd_analyze, unit_for_verify(tmp_path, typo))
    assert "Unknown key 'ProtectSytem'" in said
    bad_value = UNIT.read_text().replace("Restart=on-failure", "Restart=sometimes")
    assert "sometimes" in verify(systemd_analyze, unit_for_verify(tmp_path, bad_value))


def test_hardening_exposure_is_low(systemd_analyze: str, tmp_path: Path) -> None:
    """`systemd-analyze security --offline` rates the sandbox at most 2.0 (systemd's "OK")."""
    unit = unit_for_verify(tmp_path, UNIT.read_text())
    result = subprocess.run(
        [systemd_analyze, "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for routerctl\.service: ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_unit_keeps_the_service_contract() -> None:
    """Serve from the config, reload by SIGHUP to the main process, restart on failure, keep
    state in StateDirectory as a dynamic user, and outwait the router's graceful drain."""
    unit = directives(UNIT.read_text())
    service = {key.removeprefix("[Service]"): values for key, values in unit.items()}
    assert service["Type"] in (["simple"], ["notify"])
    assert service["ExecStart"] == [f"{INSTALLED_BINARY} serve"]
    assert service["Environment"][0] == "ROUTERCTL_CONFIG=/etc/routerctl/router.toml"
    assert service["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == ["on-failure"]
    assert service["DynamicUser"] == ["yes"]
    assert service["StateDirectory"] == ["routerctl"]
    assert service["WorkingDirectory"] == ["/var/lib/routerctl"]
    assert int(service["LimitNOFILE"][0]) >= 65536
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict")):
        assert service[key] == [value]
    assert service["PrivateTmp"] == ["yes"]
    stop_s = int(service["TimeoutStopSec"][0])
    assert stop_s > ServerSettings().graceful_shutdown_s
    if service["Type"] == ["simple"]:  # started = serving: a readiness check must say so
        assert any("/v1/status/healthz" in line for line in service["ExecStartPost"])
