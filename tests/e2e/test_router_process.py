"""The e2e harness itself: a port taken between being picked and being bound is retried."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import cli
from tests.services import free_port


def _config(tmp: Path, mock_url: str) -> Path:
    path = tmp / "router.toml"
    path.write_text(
        f"""
[server]
metrics_listen = ""

[state]
dir = "{tmp / "state"}"

[[backends]]
id = "mock"
url = "{mock_url}"

[[models]]
name = "chat"
backends = [{{ backend = "mock" }}]
"""
    )
    return path


def test_a_port_taken_before_the_router_binds_it_is_picked_again(
    mock_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        picks: Iterator[int] = iter([taken.getsockname()[1], free_port()])
        monkeypatch.setattr(cli, "free_port", lambda: next(picks, None) or free_port())
        with cli.router_process(["--config", str(_config(tmp_path, mock_url))], tmp_path) as r:
            assert r.port != taken.getsockname()[1]
            with urllib.request.urlopen(f"{r.url}/v1/status/healthz", timeout=5) as answer:  # noqa: S310
                assert answer.status == 200
