"""The PyInstaller one-file `routerctl`, not the source tree: what an operator runs on a VM.

The binary is $ROUTERCTL_BINARY when set, else dist/routerctl, built first (with the same
function as `nox -s binary`) when it is missing or older than its sources.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from types import ModuleType

import openai
import pytest

from appliance.auth.keyring import hash_key
from appliance.build import STAMP_MODULE
from appliance.demo import DEMO_KEY, DEMO_MODEL
from tests.e2e.cli import RouterProcess, mock_backend_process, router_process, run_cli
from tests.services import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
KEY = "rk-e2e-binary"
OPERATOR = "rka-e2e-binary-operator"
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def load_builder() -> ModuleType:
    """packaging/pyinstaller/build.py, the build `nox -s binary` runs."""
    spec = importlib.util.spec_from_file_location(
        "routerctl_binary_build", ROOT / "packaging" / "pyinstaller" / "build.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def binary() -> list[str]:
    """The executable under test, as an argv prefix."""
    if explicit := os.environ.get("ROUTERCTL_BINARY"):
        path = Path(explicit).resolve()
        assert path.is_file(), f"ROUTERCTL_BINARY={explicit} is not a file"
        assert os.access(path, os.X_OK), f"ROUTERCTL_BINARY={explicit} is not executable"
        return [str(path)]
    builder = load_builder()
    lock = ROOT / "build" / "binary.lock"
    lock.parent.mkdir(exist_ok=True)
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # xdist workers: one builds, the others wait for it
        if builder.is_stale():
            builder.build()
    return [str(builder.BINARY)]


def ok(*args: str, command: list[str], env: dict[str, str] | None = None) -> str:
    result = run_cli(*args, command=command, env={"COLUMNS": "200", **(env or {})})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_version_is_baked_in_at_build(binary: list[str]) -> None:
    """`version` reports the package version, a commit of this repository and a UTC build
    time, baked at build: ROUTERCTL_* in the environment at run time change nothing."""
    env = {"ROUTERCTL_COMMIT": "not-baked", "ROUTERCTL_BUILD_TIME": "never"}
    info = json.loads(ok("version", "--json", command=binary, env=env))
    assert info["version"] == metadata.version("routerctl")
    assert re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", info["commit"]), info
    sha = info["commit"].removesuffix("-dirty")
    known = subprocess.run(["git", "cat-file", "-e", f"{sha}^{{commit}}"], cwd=ROOT, check=False)
    assert known.returncode == 0, f"{sha} is not a commit of this repository"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", info["build_time"]), info
    described = f"{info['version']} (commit {info['commit']}, built {info['build_time']})"
    assert ok("version", command=binary, env=env) == f"routerctl {described}\n"


def test_version_options_still_reach_the_cli(binary: list[str]) -> None:
    """Only bare `version [--json]` takes the fast path: `version --help` is typer's help and
    an unknown option is a usage error."""
    assert "--json" in ok("version", "--help", command=binary)
    assert run_cli("version", "--yaml", command=binary).returncode == 2


def test_binary_bundles_every_module_and_the_stamp(binary: list[str]) -> None:
    """The archive holds every appliance and routerctl module, the build stamp, and the
    libraries imported only by name or inside functions (uvloop, hypercorn, aiokafka, ...)."""
    from PyInstaller.archive.readers import CArchiveReader  # noqa: PLC0415

    archive = CArchiveReader(binary[0])
    pyz = archive.open_embedded_archive("PYZ.pyz")
    modules = set(pyz.toc)
    ours = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for package in ("appliance", "routerctl")
        for path in (ROOT / package).rglob("*.py")
    }
    wanted = ours | {STAMP_MODULE, "hypercorn.asyncio", "aiokafka.producer", "redis.asyncio"}
    wanted |= {"structlog", "msgspec", "quart", "aiohttp", "uvloop", "prometheus_client"}
    assert wanted - modules == set()
    extensions = {name for name in archive.toc if name.endswith(".so")}
    assert any(name.startswith("uvloop/loop.") for name in extensions), extensions
    assert any(name.startswith("httptools/parser/parser.") for name in extensions), extensions


# --- serve --demo -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(binary: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    tmp = tmp_path_factory.mktemp("binary-demo")
    args = ["--demo", "--metrics-listen", f"127.0.0.1:{free_port()}"]
    with router_process(args, tmp, command=binary) as router:
        yield router


@pytest.fixture
def sdk(demo: RouterProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{demo.url}/v1", api_key=DEMO_KEY, max_retries=0) as client:
        yield client


def python_child(router: RouterProcess) -> int:
    """A one-file binary is a bootloader whose only child runs Python: that child's pid."""
    pid = router.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def test_demo_answers_a_chat_completion(demo: RouterProcess, sdk: openai.OpenAI) -> None:
    """`serve --demo` from the binary prints its key and answers the OpenAI SDK with usage."""
    assert DEMO_KEY in demo.output()
    answer = sdk.chat.completions.create(
        model=DEMO_MODEL, messages=[{"role": "user", "content": "Hello"}]
    )
    assert answer.choices[0].message.content
    assert answer.usage is not None
    assert answer.usage.total_tokens > 0


def test_demo_streams(sdk: openai.OpenAI) -> None:
    """A streamed completion arrives as several chunks that join into the text, usage last."""
    with sdk.chat.completions.create(
        model=DEMO_MODEL,
        messages=[{"role": "user", "content": "Hello"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 2
    assert text.strip()
    assert chunks[-1].usage is not None


def test_demo_runs_on_uvloop_with_the_baked_build(demo: RouterProcess, binary: list[str]) -> None:
    """The serving process has uvloop's extension loaded, and healthz reports the build
    that `version` reports."""
    maps = Path(f"/proc/{python_child(demo)}/maps").read_text()
    assert re.search(r"/uvloop/loop\.[^/]*\.so$", maps, flags=re.M), "uvloop is not loaded"
    with _HTTP.open(f"{demo.url}/v1/status/healthz", timeout=5) as response:
        build = json.loads(response.read())["build"]
    assert build == json.loads(ok("version", "--json", command=binary))


# --- a configured router: steering, audit, the usage buffer, doctor -----------------------


@pytest.fixture(scope="module")
def mocks(binary: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Two `mock-backend` processes of the binary: their base URLs (with /v1)."""
    tmp = tmp_path_factory.mktemp("binary-mocks")
    with (
        mock_backend_process(tmp, command=binary) as first,
        mock_backend_process(tmp, command=binary) as second,
    ):
        yield [first, second]


def write_config(tmp: Path, mocks: list[str], *, usage: str, redis_url: str = "") -> Path:
    """A router config for backends b0, b1 serving model "m", an operator token and key."""
    backends = "".join(
        f'[[backends]]\nid = "b{n}"\nurl = "{url}"\n\n' for n, url in enumerate(mocks)
    )
    # The mocks serve model "demo" (doctor checks that each backend lists its upstream model).
    routes = ", ".join(
        f'{{ backend = "b{n}", upstream_model = "demo" }}' for n in range(len(mocks))
    )
    path = tmp / f"router-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(
        f"""
[server]
listen = "127.0.0.1:{free_port()}"
metrics_listen = ""
graceful_shutdown_s = 2

[state]
dir = "{tmp / "state"}"
redis_url = "{redis_url}"

[usage]
{usage}

[admin]
tokens = [{{ id = "oncall", sha256 = "{hash_key(OPERATOR)}", role = "operator" }}]

{backends}
[[models]]
name = "m"
backends = [{routes}]

[[orgs]]
id = "acme"

[[keys]]
id = "k"
org = "acme"
sha256 = "{hash_key(KEY)}"
"""
    )
    return path


def chat(router: RouterProcess, key: str = KEY) -> str:
    """One chat completion through the router; the x-request-id it answered with."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = urllib.request.Request(  # noqa: S310  (loopback URL of the test's own router)
        f"{router.url}/v1/chat/completions",
        data=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with _HTTP.open(request, timeout=10) as response:
        assert json.loads(response.read())["object"] == "chat.completion"
        return str(response.headers["x-request-id"])


def chat_status(router: RouterProcess, key: str) -> int:
    """The status of one chat completion with this key (error bodies read and closed); 0 when
    nothing answered."""
    try:
        chat(router, key)
    except urllib.error.HTTPError as exc:
        with exc:
            exc.read()
        return exc.code
    except urllib.error.URLError:
        return 0
    return 200


def test_backend_degrade_and_audit_against_the_running_binary(
    binary: list[str], mocks: list[str], tmp_path: Path
) -> None:
    """`backend degrade` steers a router run from the binary; `backend list` and `audit
    lookup` show it."""
    config = write_config(tmp_path, mocks, usage='sink = "none"')
    with router_process(["--config", str(config)], tmp_path, command=binary) as router:
        env = {"ROUTERCTL_URL": router.admin_url, "ROUTERCTL_TOKEN": OPERATOR}
        ok("backend", "degrade", "b1", "--weight", "0.25", "--reason", "e2e", command=binary,
           env=env)  # fmt: skip
        listed = json.loads(ok("backend", "list", "--json", command=binary, env=env))
        b1 = next(b for b in listed["data"] if b["id"] == "b1")
        assert b1["effective_weight"] == 0.25
        assert b1["override"]["kind"] == "degrade"
        chat(router)
        found = ok("audit", "lookup", "--kind", "backend.degrade", "--json", command=binary,
                   env=env)  # fmt: skip
        events = json.loads(found)["data"]
        assert len(events) == 1, events
        assert events[0]["actor"] == "oncall"


def test_buffer_inspect_and_replay_a_stopped_routers_state_dir(
    binary: list[str], mocks: list[str], tmp_path: Path
) -> None:
    """With Kafka unreachable the router keeps usage records in its outbox; after it stops,
    `buffer inspect` counts them and `buffer replay --to file` writes exactly those requests."""
    dead = f"127.0.0.1:{free_port()}"
    config = write_config(tmp_path, mocks, usage=f'sink = "kafka"\nkafka_bootstrap = ["{dead}"]')
    with router_process(["--config", str(config)], tmp_path, command=binary) as router:
        request_ids = {chat(router) for _ in range(5)}
        assert router.terminate() == 0, router.output()
    state = str(tmp_path / "state")
    inspected = json.loads(ok("buffer", "inspect", "--state-dir", state, "--json", command=binary))
    assert inspected["records"] == inspected["topics"]["usage"]["records"] == 5, inspected
    target = tmp_path / "replayed.jsonl"
    out = ok("buffer", "replay", "--state-dir", state, "--to", "file", "--file", str(target),
             command=binary)  # fmt: skip
    assert out == "replayed 5 of 5 records to file\n"
    replayed = [json.loads(line)["request_id"] for line in target.read_text().splitlines()]
    assert sorted(replayed) == sorted(request_ids)
    drained = json.loads(ok("buffer", "inspect", "--state-dir", state, "--json", command=binary))
    assert drained["records"] == 0


def test_doctor_checks_redis_and_backends(
    binary: list[str], mocks: list[str], redis_server: RedisServer, tmp_path: Path
) -> None:
    """`doctor --json` from the binary reaches Redis and both backends; nothing fails."""
    config = write_config(tmp_path, mocks, usage='sink = "file"', redis_url=redis_server.url)
    result = run_cli("doctor", "--config", str(config), "--json", command=binary)
    rows = json.loads(result.stdout)
    statuses = {(r["check"], r["target"]): r["status"] for r in rows}
    assert statuses[("redis", f"127.0.0.1:{redis_server.port}")] == "pass", rows
    assert statuses[("backend", "b0")] == statuses[("backend", "b1")] == "pass", rows
    assert "fail" not in statuses.values(), rows
    assert result.returncode == 0, result.stderr


def test_keys_and_config_commands(binary: list[str], mocks: list[str], tmp_path: Path) -> None:
    """A key minted by `keys create` validates in a config that `config show` prints back."""
    minted = json.loads(ok("keys", "create", "--org", "acme", "--json", command=binary))
    config = write_config(tmp_path, mocks, usage='sink = "none"')
    text = config.read_text().replace(hash_key(KEY), minted["sha256"])
    config.write_text(text)
    ok("config", "validate", str(config), command=binary)
    shown = json.loads(ok("config", "show", str(config), command=binary))
    shortened = shown["keys"][0]["sha256"].removesuffix("…")  # show abbreviates hashes
    assert len(shortened) >= 8
    assert minted["sha256"].startswith(shortened)
    assert hash_key(minted["key"]) == minted["sha256"]


def test_sighup_to_the_bootloader_reloads_the_router(
    binary: list[str], mocks: list[str], tmp_path: Path
) -> None:
    """systemd's ExecReload signals $MAINPID, the one-file bootloader: it forwards SIGHUP, and
    the same router process picks up a key added to the file while it keeps serving."""
    config = write_config(tmp_path, mocks, usage='sink = "none"')
    with router_process(["--config", str(config)], tmp_path, command=binary) as router:
        serving = python_child(router)
        added = "rk-e2e-binary-added"
        with config.open("a") as text:
            text.write(f'\n[[keys]]\nid = "k2"\norg = "acme"\nsha256 = "{hash_key(added)}"\n')
        router.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while (status := chat_status(router, added)) != 200:
            assert router.process.poll() is None, router.output()
            assert status == 401, router.output()
            assert time.monotonic() < deadline, "the added key was never accepted"
            time.sleep(0.2)
        assert python_child(router) == serving
        chat(router)
