"""The README promise: `routerctl serve --demo`, then the curl and the OpenAI SDK just work."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgspec
import openai
import pytest

from appliance.demo import DEMO_KEY
from tests.e2e.cli import RouterProcess, free_port, router_process, routerctl_command, run_cli

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    tmp = tmp_path_factory.mktemp("demo")
    metrics = f"127.0.0.1:{free_port()}"
    with router_process(["--demo", "--metrics-listen", metrics], tmp) as router:
        router.metrics_url = f"http://{metrics}/metrics"  # type: ignore[attr-defined]
        yield router


@pytest.fixture
def client(demo: RouterProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{demo.url}/v1", api_key=DEMO_KEY, max_retries=0) as sdk:
        yield sdk


def test_demo_prints_its_key(demo: RouterProcess) -> None:
    """The demo banner shows the key the README uses."""
    assert DEMO_KEY in demo.output()


def test_readme_curl_gets_a_chat_completion(demo: RouterProcess) -> None:
    """The curl line in the README, replayed as written, gets a chat completion."""
    match = re.search(r"^curl .*?(?<!\\)$", README.read_text(), flags=re.M | re.S)
    assert match, "README has no curl example"
    argv = shlex.split(match.group(0).replace("\\\n", " "))
    url = argv[1].replace("http://127.0.0.1:8080", demo.url)
    headers = dict(h.split(": ", 1) for flag, h in itertools.pairwise(argv) if flag == "-H")
    data = argv[argv.index("-d") + 1].encode()
    assert url.startswith("http://127.0.0.1:")
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")  # noqa: S310
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        answer = msgspec.json.decode(response.read())
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"]


def test_readme_sdk_example_runs(demo: RouterProcess) -> None:
    """The README's OpenAI SDK snippet runs as written against the demo."""
    match = re.search(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert match, "README has no python example"
    code = match.group(1).replace("http://127.0.0.1:8080", demo.url)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tok0 tok1")
    assert lines[-1] == "['demo']"


def test_sdk_chat_completion(client: openai.OpenAI) -> None:
    """openai.chat.completions.create returns a completion with usage."""
    completion = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "Hello there"}], max_tokens=5
    )
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5


def test_sdk_stream(client: openai.OpenAI) -> None:
    """A streamed completion arrives as several chunks and ends with usage."""
    stream = client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices]) == 6
    assert text.split() == [f"tok{i}" for i in range(6)]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6


def test_sdk_embedding(client: openai.OpenAI) -> None:
    """Embeddings come back as vectors, one per input."""
    result = client.embeddings.create(model="demo", input=["a", "b"])
    assert [len(d.embedding) for d in result.data] == [8, 8]


def test_sdk_models(client: openai.OpenAI) -> None:
    """The model list has the demo model."""
    assert [m.id for m in client.models.list()] == ["demo"]


def test_sdk_errors_map_to_sdk_exceptions(demo: RouterProcess) -> None:
    """A bad key and an unknown model raise the SDK's own exception classes."""
    with (
        openai.OpenAI(base_url=f"{demo.url}/v1", api_key="rk-wrong", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError),
    ):
        bad.models.list()
    with openai.OpenAI(base_url=f"{demo.url}/v1", api_key=DEMO_KEY, max_retries=0) as sdk:
        with pytest.raises(openai.NotFoundError) as caught:
            sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
        assert caught.value.code == "model_not_found"


def test_sdk_raises_on_mid_stream_error(client: openai.OpenAI) -> None:
    """A backend breaking mid-stream surfaces as an SDK APIError, not a hang."""
    stream = client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "[mock:chunks=10] [mock:break_after=3]"}],
        stream=True,
    )
    with pytest.raises(openai.APIError, match="middle of the response"):
        list(stream)


def test_the_printed_export_line_makes_operator_commands_work(demo: RouterProcess) -> None:
    """The banner's `export ROUTERCTL_URL=… ROUTERCTL_TOKEN=…`, used as printed, lets
    `backend list`, `backend degrade` and `override list` work against the demo."""
    match = re.search(r"export (ROUTERCTL_URL=\S+) (ROUTERCTL_TOKEN=\S+)", demo.output())
    assert match is not None, demo.output()
    env = dict(pair.split("=", 1) for pair in match.groups())
    assert env["ROUTERCTL_URL"] == demo.admin_url  # the admin listener's
    listed = run_cli("backend", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "mock-a" in listed.stdout
    degraded = run_cli("backend", "degrade", "mock-b", "--factor", "0.5", "--reason", "t", env=env)
    assert degraded.returncode == 0, degraded.stderr
    overrides = run_cli("override", "list", env=env)
    assert "demo-operator" in overrides.stdout, overrides.stdout
    audited = run_cli("audit", "lookup", "--kind", "backend.degrade", env=env)
    assert audited.returncode == 0, audited.stderr
    assert "mock-b" in audited.stdout
    restored = run_cli("backend", "restore", "mock-b", "--reason", "done", env=env)
    assert restored.returncode == 0, restored.stderr


def test_doctor_checks_the_running_demo(demo: RouterProcess) -> None:
    """`routerctl doctor` with the demo's export line checks the live router: it is up and
    ready, its backends and outbox are fine (exit 0); a degrade shows as a warning; without a
    token it says what it could not check; `--url` at nothing fails with one row, exit 1."""
    match = re.search(r"export (ROUTERCTL_URL=\S+) (ROUTERCTL_TOKEN=\S+)", demo.output())
    assert match is not None
    env = dict(pair.split("=", 1) for pair in match.groups())
    done = run_cli("doctor", "--json", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {(r["check"], r["target"]): r for r in msgspec.json.decode(done.stdout)}
    assert rows[("router", demo.admin_url)]["status"] == "pass"
    assert rows[("ready", "usage_buffer")]["status"] == "pass"
    assert rows[("ready", "redis")]["status"] == "skip"
    assert {rows[("backend", b)]["status"] for b in ("mock-a", "mock-b")} == {"pass"}
    assert [r["status"] for (check, _), r in rows.items() if check == "outbox"] == ["pass"]

    run_cli("backend", "degrade", "mock-a", "--factor", "0.5", "--reason", "drill", env=env)
    try:
        warned = run_cli("doctor", "--json", env=env)
        row = next(r for r in msgspec.json.decode(warned.stdout) if r["target"] == "mock-a")
        assert (warned.returncode, row["status"]) == (0, "warn")
        assert "drill" in row["detail"]
    finally:
        run_cli("backend", "restore", "mock-a", "--reason", "done", env=env)

    no_token = run_cli("doctor", "--url", demo.admin_url, env={"ROUTERCTL_TOKEN": ""})
    assert no_token.returncode == 0
    assert "backends and the outbox were not checked" in no_token.stdout

    nothing = run_cli("doctor", "--url", f"http://127.0.0.1:{free_port()}")
    assert nothing.returncode == 1
    assert "cannot reach router" in nothing.stdout


def _tour() -> list[str]:
    """The README's operator block: its command lines, comments dropped."""
    text = README.read_text()
    match = re.search(r"```bash\n(export ROUTERCTL_URL=.*?)```", text, flags=re.S)
    assert match, "README has no operator tour block"
    lines = [line.split("  #")[0].strip() for line in match.group(1).splitlines()]
    return [line for line in lines if line]


def _top_first_frame(argv: list[str], env: dict[str, str]) -> str:
    """`routerctl top` as written runs until Ctrl-C: read its first frame, then interrupt."""
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as process:
        try:
            assert process.stdout is not None
            seen = [line for line, _ in zip(process.stdout, range(12), strict=False)]
            process.send_signal(signal.SIGINT)
            process.wait(timeout=10)
        finally:
            process.kill()
    return "".join(seen)


def test_readme_operator_tour_runs_as_written(demo: RouterProcess) -> None:
    """Every command of the README's operator tour (export, backend list, degrade, override,
    audit, doctor, top, restore), run as written against the demo, succeeds and shows what
    its comment promises."""
    lines = _tour()
    assert lines[0].startswith("export ROUTERCTL_URL=http://127.0.0.1:8081 ")
    exported = dict(pair.split("=", 1) for pair in lines[0].removeprefix("export ").split())
    env = {
        **os.environ,
        **exported,
        "ROUTERCTL_URL": demo.admin_url,  # the README's is the demo's default; here a free one
        "ROUTERCTL_METRICS_URL": demo.metrics_url,  # type: ignore[attr-defined]
    }
    outputs: dict[str, str] = {}
    for line in lines[1:]:
        argv = shlex.split(line)
        assert argv[0] == "routerctl", line
        argv = [*routerctl_command(), *argv[1:]]
        if line == "routerctl top":
            outputs["top"] = _top_first_frame(argv, env)
            continue
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, env=env, check=False
        )
        assert done.returncode == 0, f"{line}: {done.stdout}{done.stderr}"
        outputs[shlex.split(line)[1]] = outputs.get(shlex.split(line)[1], "") + done.stdout
    assert "mock-a" in outputs["backend"]
    assert "drill" in outputs["override"]
    assert "backend.degrade" in outputs["audit"]
    assert "mock-a" in outputs["doctor"]
    assert "BACKEND" in outputs["top"], outputs["top"]
    assert "mock-a" in outputs["top"], outputs["top"]
