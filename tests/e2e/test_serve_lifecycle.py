"""The binary as operators run it: graceful drain on SIGTERM, mock-backend, keys, bad configs."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.e2e import cli
from tests.e2e.cli import router_process, run_cli
from tests.services import free_port


def write_config(
    tmp: Path, mock_url: str, key_lines: str, graceful_s: float, engine: str = "routerctl"
) -> Path:
    path = tmp / "router.toml"
    path.write_text(
        f"""
[server]
engine = "{engine}"
graceful_shutdown_s = {graceful_s}
metrics_listen = ""

[state]
dir = "{tmp / "state"}"

[[backends]]
id = "mock"
url = "{mock_url}"

[[models]]
name = "m"
backends = [{{ backend = "mock" }}]

[[orgs]]
id = "acme"
{key_lines}
"""
    )
    return path


def minted_key(org: str) -> tuple[str, str]:
    """`routerctl keys create --json`: the key and the [[keys]] block for it."""
    result = run_cli("keys", "create", "--org", org, "--json")
    assert result.returncode == 0, result.stderr
    minted = json.loads(result.stdout)
    block = f'\n[[keys]]\nid = "{minted["id"]}"\norg = "{org}"\nsha256 = "{minted["sha256"]}"\n'
    return minted["key"], block


async def open_stream(
    session: aiohttp.ClientSession, url: str, key: str, chunks: int, delay_ms: int
) -> aiohttp.ClientResponse:
    """Start a paced stream and wait for its first event."""
    content = f"[mock:chunks={chunks}] [mock:chunk_delay_ms={delay_ms}]"
    response = await session.post(
        f"{url}/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": content}], "stream": True},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status == 200
    await response.content.readuntil(b"\n\n")
    return response


ENGINES = pytest.mark.parametrize("engine", ["routerctl", "hypercorn"])


@ENGINES
async def test_sigterm_lets_an_inflight_stream_finish(
    mock_url: str, tmp_path: Path, engine: str
) -> None:
    """After SIGTERM the listener closes, the open stream completes, and the exit code is 0
    (on either server engine)."""
    key, block = minted_key("acme")
    config = write_config(tmp_path, mock_url, block, graceful_s=10, engine=engine)
    with router_process(["--config", str(config)], tmp_path) as router:
        async with aiohttp.ClientSession() as session:
            response = await open_stream(session, router.url, key, chunks=8, delay_ms=250)
            router.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            with pytest.raises(aiohttp.ClientConnectionError):
                async with aiohttp.ClientSession() as fresh:
                    await fresh.get(f"{router.url}/v1/status/healthz")
            rest = await asyncio.wait_for(response.read(), 10)
        assert rest.endswith(b"data: [DONE]\n\n")
        assert rest.count(b"chat.completion.chunk") == 7
        assert await asyncio.to_thread(router.process.wait, 10) == 0


@ENGINES
async def test_drain_deadline_ends_long_streams(mock_url: str, tmp_path: Path, engine: str) -> None:
    """A stream longer than graceful_shutdown_s is cut at the deadline; the router still exits 0."""
    key, block = minted_key("acme")
    config = write_config(tmp_path, mock_url, block, graceful_s=0.5, engine=engine)
    with router_process(["--config", str(config)], tmp_path) as router:
        async with aiohttp.ClientSession() as session:
            response = await open_stream(session, router.url, key, chunks=200, delay_ms=100)
            started = time.monotonic()
            router.process.send_signal(signal.SIGTERM)
            try:
                rest = await asyncio.wait_for(response.read(), 10)
            except aiohttp.ClientPayloadError:
                rest = b""  # cut before the final event could be written: also not a hang
        assert b"[DONE]" not in rest
        if rest:
            assert rest.rstrip().endswith(b'"code":"upstream_stream_broken"}}')
        assert await asyncio.to_thread(router.process.wait, 10) == 0
        assert time.monotonic() - started < 8


def test_config_validate_reports_each_problem(tmp_path: Path) -> None:
    """`config validate` prints file:line: key: reason per problem and exits 1."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nlisen = "x"\nworkers = 0\n\n[[backends]]\nid = "a"\n')
    result = run_cli("config", "validate", str(bad))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{bad}:2: server.lisen: unknown key; did you mean 'listen'?",
        f"{bad}:3: server.workers: must be a whole number >= 1",
        f"{bad}:5: backends[0].url: required key is missing",
    ]


def test_serve_refuses_bad_config_and_missing_env(tmp_path: Path) -> None:
    """`serve` exits 1 with one line per problem, naming a missing credential variable."""
    config = tmp_path / "r.toml"
    config.write_text(
        '[[backends]]\nid = "a"\nurl = "http://127.0.0.1:1/v1"\napi_key_env = "NOT_SET_ANYWHERE"\n'
    )
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"{config}:4: backends[0].api_key_env: environment variable NOT_SET_ANYWHERE is not set"
    )
    ok = run_cli("config", "validate", "--skip-env", str(config))
    assert ok.returncode == 0
    assert ok.stdout.strip() == f"{config}: ok"


def test_serve_needs_exactly_one_source() -> None:
    """`serve` with neither --config nor --demo is a usage error with one line."""
    result = run_cli("serve")
    assert result.returncode == 2
    assert result.stderr.strip() == "routerctl: error: pass exactly one of --config FILE or --demo"


def test_serve_missing_file() -> None:
    """A config path that does not exist is one readable line."""
    result = run_cli("serve", "--config", "/nonexistent/router.toml")
    assert result.returncode == 1
    assert result.stderr.startswith("/nonexistent/router.toml: cannot read:")


def test_example_config_is_valid() -> None:
    """config/router.example.toml validates (env variables aside)."""
    example = Path(__file__).resolve().parents[2] / "config" / "router.example.toml"
    result = run_cli("config", "validate", "--skip-env", str(example))
    assert result.returncode == 0, result.stderr


def test_keys_create_prints_the_block() -> None:
    """`keys create` prints the key once (stderr) and the [[keys]] lines to paste (stdout)."""
    result = run_cli("keys", "create", "--org", "acme", "--id", "k1")
    assert result.returncode == 0
    assert result.stderr.startswith("API key (shown once, store it now): rk-")
    key = result.stderr.split(": ", 1)[1].strip()
    assert key not in result.stdout
    assert '[[keys]]\nid = "k1"\norg = "acme"\nsha256 = "' in result.stdout


def test_version() -> None:
    """`version --json` reports version, commit and build time."""
    result = run_cli("version", "--json")
    assert set(json.loads(result.stdout)) == {"version", "commit", "build_time"}


def test_unusable_state_dir_is_one_line(tmp_path: Path) -> None:
    """A state dir that cannot be created stops the start with one readable line and exit 1."""
    config = tmp_path / "r.toml"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    config.write_text(f'[server]\nmetrics_listen = ""\n\n[state]\ndir = "{blocker}/state"\n')
    result = run_cli("serve", "--config", str(config), "--listen", "127.0.0.1:0")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("routerctl: error: cannot start: ")


async def test_sigterm_turns_readiness_503_before_the_listener_closes(
    mock_url: str, tmp_path: Path
) -> None:
    """With shutdown_delay_s, readyz answers 503 `shutting_down` after SIGTERM, then the
    listener closes and the router exits 0."""
    _key, block = minted_key("acme")
    config = write_config(tmp_path, mock_url, block, graceful_s=5)
    text = config.read_text().replace("[server]\n", "[server]\nshutdown_delay_s = 1.5\n", 1)
    config.write_text(text)
    with router_process(["--config", str(config)], tmp_path) as router:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{router.url}/v1/status/readyz") as before:
                assert before.status == 200
            router.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            async with session.get(f"{router.url}/v1/status/readyz") as during:
                body = await during.json()
            assert during.status == 503
            assert (body["status"], body["shutting_down"]) == ("degraded", True)
        assert await asyncio.to_thread(router.process.wait, 10) == 0


def test_a_port_taken_before_the_router_binds_it_is_picked_again(
    mock_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The harness itself: a port found free but taken before the router binds it (another
    process, an outgoing connection's source port) is retried on a new one."""
    path = write_config(tmp_path, mock_url, "", graceful_s=5.0)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        picks: Iterator[int] = iter([taken.getsockname()[1], free_port()])
        monkeypatch.setattr(cli, "free_port", lambda: next(picks, None) or free_port())
        with router_process(["--config", str(path)], tmp_path) as router:
            assert router.port != taken.getsockname()[1]
            url = f"{router.url}/v1/status/healthz"
            with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310
                assert answer.status == 200
