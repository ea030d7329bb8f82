"""docs/quickstart.md, replayed: each track's commands as the page writes them, their output
matched against the page's ```text blocks (`...` stands for any text, a `...` line for any
lines; runs of spaces count as one).

The VM and Kubernetes tracks run the built binary (the `binary` fixture of test_binary.py, the
build `nox -s binary` makes), the source track the installed CLI. What needs root or a cluster
is stood in for (tests/unit/doc_commands.py lists those commands with the reasons):
- `install` / `tee` into /etc and /usr/local: the same files under tmp_path;
- `systemctl enable --now routerctl`: the unit's ExecStart, with its Environment and
  WorkingDirectory and nothing else from this environment but PATH;
- `helm install`: `helm template` of the same chart and values, and the Deployment's container
  command and environment run with the binary, the Secret's variable set from the page's
  `kubectl create secret`; `kubectl port-forward` goes straight to that process.
The page's ports (8080, 8081, 9090, 8001) become free ports on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests import tools
from tests.e2e.cli import kill_group, router_process, run_cli
from tests.e2e.test_binary import binary
from tests.packaging.test_helm_chart import by_kind, container, deployment, router_toml
from tests.packaging.test_systemd_unit import INSTALLED_BINARY, UNIT, directives
from tests.services import free_port
from tests.unit.doc_commands import Block, block_commands, blocks_and_headings, sections

__all__ = ["binary"]

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "docs" / "quickstart.md"
CHART = "packaging/helm/routerctl"
# The tracks' anchors.
VM = "1-a-vm-the-binary-and-systemd"
KUBERNETES = "2-kubernetes-the-helm-chart"
SOURCE = "3-from-source"
SECRET_VALUE = "backend-secret-from-the-kubernetes-secret"
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- the page -------------------------------------------------------------------------------
def dedent(block: Block) -> str:
    return textwrap.dedent("\n".join(block.lines)).strip("\n") + "\n"


@dataclass(frozen=True)
class Step:
    argv: list[str]
    expected: str | None  # the ```text block right after the command's ```sh block


@dataclass
class Track:
    blocks: list[Block]
    steps: list[Step] = field(default_factory=list)

    @classmethod
    def parse(cls, anchor: str) -> Track:
        found = sections(QUICKSTART.read_text(encoding="utf-8"))
        assert anchor in found, f"quickstart.md has no section #{anchor}: {sorted(found)}"
        blocks, _ = blocks_and_headings(found[anchor].body)
        track = cls(blocks)
        for index, block in enumerate(blocks):
            if block.lang == "sh":
                expected = track.text_after(index)
                track.steps += [Step(argv, expected) for _, argv in block_commands(block)]
        return track

    def text_after(self, index: int) -> str | None:
        following = self.blocks[index + 1 : index + 2]
        return dedent(following[0]) if following and following[0].lang == "text" else None

    def step(self, *argv: str) -> Step:
        """The one command of the track that is exactly this."""
        found = [s for s in self.steps if s.argv == list(argv)]
        assert len(found) == 1, f"{shlex.join(argv)!r} {len(found)} times in: {self.commands()}"
        return found[0]

    def curls(self) -> list[Step]:
        return [s for s in self.steps if s.argv[0] == "curl"]

    def code(self, lang: str) -> tuple[str, str | None]:
        """The track's one block in this language, and the ```text block after it."""
        (index,) = [i for i, b in enumerate(self.blocks) if b.lang == lang]
        return dedent(self.blocks[index]), self.text_after(index)

    def commands(self) -> list[str]:
        return [shlex.join(s.argv) for s in self.steps]


@dataclass
class Local:
    """The page's paths, ports and $KEY, mapped to this test's."""

    tmp: Path
    ports: dict[str, int]
    extra: list[tuple[str, str]] = field(default_factory=list)
    key: str = ""

    @property
    def config(self) -> Path:
        return self.tmp / "etc-routerctl" / "router.toml"

    @property
    def state(self) -> Path:
        return self.tmp / "var-lib-routerctl"

    def url(self, port: str) -> str:
        return f"http://127.0.0.1:{self.ports[port]}"

    def text(self, text: str) -> str:
        pairs = [
            *self.extra,
            ("/etc/routerctl/router.toml", str(self.config)),
            ("/var/lib/routerctl", str(self.state)),
            ("$KEY", self.key),
        ]
        for port, local in self.ports.items():
            pairs += [(f"{host}:{port}", f"127.0.0.1:{local}") for host in ("0.0.0.0", "127.0.0.1")]
        for old, new in pairs:
            text = text.replace(old, new)
        return text

    def argv(self, argv: Sequence[str]) -> list[str]:
        return [str(self.ports[a]) if a in self.ports else self.text(a) for a in argv]


# --- expected output ------------------------------------------------------------------------
def normalized(text: str) -> str:
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "".join(f"{line}\n" for line in lines if line)


def pattern_of(expected: str) -> re.Pattern[str]:
    """`...` in a line: any text in that line; a `...` line: any lines, or none."""
    parts = []
    for line in normalized(expected).splitlines():
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*?".join(re.escape(piece) for piece in line.split("...")) + r"\n")
    return re.compile("".join(parts))


def assert_shows(expected: str | None, actual: str, local: Local) -> None:
    assert expected is not None, "the quickstart shows no output for this command"
    wanted = local.text(expected)
    assert pattern_of(wanted).fullmatch(normalized(actual)), (
        f"the quickstart shows:\n{wanted}\nthe command printed:\n{actual}"
    )


def test_expected_output_matching_has_teeth() -> None:
    """`...` elides within a line or whole lines; everything else must be there, in order."""
    expected = "a ... b\n...\nz\n"
    assert pattern_of(expected).fullmatch(normalized("a x y  b\nc\nd\n\nz\n"))
    assert pattern_of(expected).fullmatch(normalized("a  x  b\nz"))
    assert not pattern_of(expected).fullmatch(normalized("a x\nb\nz\n"))
    assert not pattern_of(expected).fullmatch(normalized("a b\nz\nextra\n"))


# --- running it -----------------------------------------------------------------------------
@contextmanager
def background(
    argv: Sequence[str], log: Path, ready: str, *, env: dict[str, str], cwd: Path | None = None
) -> Iterator[subprocess.Popen[str]]:
    """Start argv in a process group of its own; wait until `ready` answers 200; kill and reap
    the group on the way out, whatever happened."""
    with log.open("w") as sink:
        process = subprocess.Popen(
            list(argv), stdout=sink, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not answers(ready):
            assert process.poll() is None, f"{argv[1:3]} exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{ready} never answered:\n{log.read_text()}"
            time.sleep(0.1)
        yield process
    finally:
        kill_group(process)


def answers(url: str) -> bool:
    try:
        with _HTTP.open(url, timeout=1) as response:
            response.read()
            return bool(response.status == 200)
    except urllib.error.HTTPError as error:
        with error:
            return False
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def replay_curl(argv: list[str]) -> tuple[str, str]:
    """The request line ("POST /v1/chat/completions") of this (already localised) curl
    command line, and the body curl would print."""
    url, headers, data, method = "", {}, None, None
    args = iter(argv[1:])
    for arg in args:
        if arg in ("-H", "--header"):
            name, _, value = next(args).partition(":")
            headers[name.strip()] = value.strip()
        elif arg in ("-d", "--data"):
            data = next(args).encode()
        elif arg in ("-X", "--request"):
            method = next(args)
        elif arg.startswith("-"):
            assert arg in ("-s", "-N", "-sN"), f"curl {arg} is not replayed here"
        else:
            url = url or arg
    method = method or ("POST" if data is not None else "GET")
    request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310  (the test's own loopback router)
    call = f"{method} {urlsplit(url).path}"
    try:
        with _HTTP.open(request, timeout=15) as response:
            return call, str(response.read().decode())
    except urllib.error.HTTPError as error:  # curl -s prints error bodies too
        with error:
            return call, f"HTTP {error.code}: {error.read().decode()}"


READYZ = ("GET", "/v1/status/readyz")
CHAT = ("POST", "/v1/chat/completions")


def ask(track: Track, local: Local, calls: list[tuple[str, str]]) -> None:
    """Replay every curl of the track: they are these calls, and each prints what the page
    shows."""
    made = []
    for step in track.curls():
        call, body = replay_curl(local.argv(step.argv))
        made.append(call)
        assert_shows(step.expected, body, local)
    assert made == [" ".join(call) for call in calls]


def mint_key(track: Track, local: Local, command: list[str], argv: list[str]) -> str:
    """Run the page's `keys create`; check what it prints, remember the key for $KEY and
    return the [[keys]] lines."""
    step = track.step(*argv)
    minted = run_cli(*step.argv[1:], command=command)
    assert minted.returncode == 0, minted.stderr
    assert_shows(step.expected, minted.stderr + minted.stdout, local)
    local.key = re.findall(r"\brk-\S+", minted.stderr)[-1]
    return minted.stdout


# --- 1. a VM --------------------------------------------------------------------------------
def unit_service(local: Local, binary: list[str]) -> tuple[list[str], dict[str, str], Path]:
    """ExecStart, Environment and WorkingDirectory of packaging/systemd/routerctl.service, for
    this test's binary, config and ports."""
    service = {
        key.removeprefix("[Service]"): values
        for key, values in directives(UNIT.read_text()).items()
    }
    (start,) = service["ExecStart"]
    argv = shlex.split(start.replace(INSTALLED_BINARY, binary[0]))
    env = dict(line.split("=", 1) for line in service["Environment"])
    env = {name: local.text(value) for name, value in env.items()}
    (workdir,) = service["WorkingDirectory"]
    return argv, {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}, Path(local.text(workdir))


def test_vm_track(binary: list[str], tmp_path: Path) -> None:
    """Track 1 as written: the binary, the mock backend, the config with a minted key, the
    router started as the unit starts it, readyz, a completion, a stream, doctor."""
    track = Track.parse(VM)
    local = Local(tmp_path, {p: free_port() for p in ("8080", "8081", "9090", "8001")})
    track.step("nox", "-s", "binary")  # the `binary` fixture runs that build
    track.step("install", "-m", "0755", "dist/routerctl", "/usr/local/bin/routerctl")
    installed = track.step(
        "install", "-m", "0644", "packaging/systemd/routerctl.service",
        "/etc/systemd/system/routerctl.service",
    )  # fmt: skip
    assert ROOT / installed.argv[3] == UNIT  # the unit run below is the one the page installs
    mock = track.step("routerctl", "mock-backend", "--port", "8001")
    health = f"{local.url('8001')}/health"
    env = dict(os.environ)
    with background([*binary, *local.argv(mock.argv[1:])], tmp_path / "mock.log", health, env=env):
        write_vm_config(track, local, binary)
        track.step("systemctl", "daemon-reload")
        track.step("systemctl", "enable", "--now", "routerctl")
        argv, unit_env, workdir = unit_service(local, binary)
        assert workdir == local.state
        workdir.mkdir()  # StateDirectory=routerctl
        ready = f"{local.url('8080')}/v1/status/healthz"  # the unit's ExecStartPost check
        with background(argv, tmp_path / "router.log", ready, env=unit_env, cwd=workdir):
            ask(track, local, [READYZ, CHAT, CHAT])  # a completion, then a stream
            doctor = track.step("routerctl", "doctor", "--config", "/etc/routerctl/router.toml")
            checked = run_cli(*local.argv(doctor.argv[1:]), command=binary)
            assert checked.returncode == 0, checked.stdout + checked.stderr
            assert_shows(doctor.expected, checked.stdout + checked.stderr, local)


def write_vm_config(track: Track, local: Local, binary: list[str]) -> None:
    """Step 4: the TOML, `keys create | tee -a` onto it, `config validate`."""
    toml, _ = track.code("toml")
    local.config.parent.mkdir()
    local.config.write_text(local.text(toml))
    keys = mint_key(
        track, local, binary, ["routerctl", "keys", "create", "--org", "acme", "--id", "first-key"]
    )
    track.step("tee", "-a", "/etc/routerctl/router.toml")
    with local.config.open("a") as config:
        config.write(keys)
    validate = track.step("routerctl", "config", "validate", "/etc/routerctl/router.toml")
    validated = run_cli(*local.argv(validate.argv[1:]), command=binary)
    assert validated.returncode == 0, validated.stderr
    assert_shows(validate.expected, validated.stdout, local)


# --- 2. Kubernetes --------------------------------------------------------------------------
@dataclass
class Rendered:
    docs: list[dict[str, Any]]
    secret: str  # the Secret the page creates
    literals: dict[str, str]  # its keys, with this test's values


def render_quickstart_values(track: Track, local: Local, binary: list[str]) -> Rendered:
    """Step 2 and 3: the key, my-values.yaml with it, the Secret; `helm template` with the
    page's release name, chart and values file in place of `helm install`."""
    keys = mint_key(
        track, local, binary,
        ["dist/routerctl", "keys", "create", "--org", "acme", "--id", "first-key"],
    )  # fmt: skip
    sha256 = tomllib.loads(keys)["keys"][0]["sha256"]
    values, _ = track.code("yaml")
    assert values.count('sha256 = "..."') == 1, values
    values_file = local.tmp / "my-values.yaml"
    values_file.write_text(values.replace('"..."', f'"{sha256}"'))
    secret = track.step(
        "kubectl", "create", "secret", "generic", "routerctl-backend-keys",
        "--from-literal=VLLM_A_API_KEY=...",
    )  # fmt: skip
    literals = {
        a.removeprefix("--from-literal=").split("=", 1)[0]: SECRET_VALUE
        for a in secret.argv
        if a.startswith("--from-literal=")
    }
    install = track.step("helm", "install", "routerctl", CHART, "-f", "my-values.yaml")
    args = [str(values_file) if a == "my-values.yaml" else a for a in install.argv[2:]]
    result = subprocess.run(
        [str(tools.helm()), "template", *args],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,  # a checkout
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return Rendered(docs, secret.argv[4], literals)


def pod_process(
    rendered: Rendered, local: Local, binary: list[str]
) -> tuple[list[str], dict[str, str]]:
    """The Deployment's container: its command and args, its environment with the Secret's
    keys filled in; its mounted router.toml written to the local config path."""
    main = container(rendered.docs)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for var in main["env"]:
        if "value" in var:
            env[var["name"]] = local.text(var["value"])
            continue
        ref = var["valueFrom"]["secretKeyRef"]
        assert ref["name"] == rendered.secret, ref
        env[var["name"]] = rendered.literals[ref["key"]]
    mount = next(m for m in main["volumeMounts"] if m["name"] == "config")
    assert f"{mount['mountPath']}/router.toml" == "/etc/routerctl/router.toml"
    local.config.parent.mkdir()
    local.config.write_text(local.text(router_toml(rendered.docs)))
    (command,) = main["command"]
    assert command == INSTALLED_BINARY
    return [*binary, *local.argv(main["args"])], env


def check_names(track: Track, rendered: Rendered) -> dict[str, Any]:
    """The names the page's kubectl and docker commands use are the rendered ones; the
    backend the rendered TOML routes the model to."""
    build = track.step("docker", "build", "-t", "registry.example.internal/routerctl:0.1.0", ".")
    assert container(rendered.docs)["image"] == build.argv[3]
    track.step("kubectl", "rollout", "status", "deploy/routerctl")
    assert deployment(rendered.docs)["metadata"]["name"] == "routerctl"
    track.step("kubectl", "port-forward", "svc/routerctl", "8080:8080")
    (service,) = by_kind(rendered.docs)["Service"]
    assert service["metadata"]["name"] == "routerctl"
    assert [p["port"] for p in service["spec"]["ports"] if p["name"] == "http"] == [8080]
    refs = {e["name"] for e in container(rendered.docs)["env"] if "valueFrom" in e}
    assert refs == set(rendered.literals) == {"VLLM_A_API_KEY"}
    config = tomllib.loads(router_toml(rendered.docs))
    (backend,) = config["backends"]
    (model,) = config["models"]
    return {"url": backend["url"], "model": model["backends"][0]["upstream_model"]}


def test_kubernetes_track(binary: list[str], tmp_path: Path) -> None:
    """Track 2 as written: the key, the values, the Secret, the chart rendered with them; the
    rendered container run with the binary answers readyz and a completion, its backend
    reached with the key from the Secret."""
    track = Track.parse(KUBERNETES)
    track.step("nox", "-s", "binary")  # the `binary` fixture runs that build
    local = Local(tmp_path, {p: free_port() for p in ("8080", "8081", "9090")})
    rendered = render_quickstart_values(track, local, binary)
    backend = check_names(track, rendered)
    mock_port = free_port()
    local.extra.append((backend["url"], f"http://127.0.0.1:{mock_port}/v1"))
    mock = [
        *binary, "mock-backend", "--port", str(mock_port), "--model", backend["model"],
        "--require-key-env", "VLLM_A_API_KEY",
    ]  # fmt: skip
    mock_env = {**os.environ, "VLLM_A_API_KEY": SECRET_VALUE}
    health = f"http://127.0.0.1:{mock_port}/health"
    with background(mock, tmp_path / "mock.log", health, env=mock_env):
        argv, env = pod_process(rendered, local, binary)
        local.state.mkdir()  # the stateVolume
        ready = f"{local.url('8080')}/v1/status/healthz"
        with background(argv, tmp_path / "pod.log", ready, env=env, cwd=tmp_path):
            ask(track, local, [READYZ, CHAT])


# --- 3. from source -------------------------------------------------------------------------
def test_source_track(tmp_path: Path) -> None:
    """Track 3 as written, with the installed CLI: the demo's banner, readyz, and the OpenAI
    SDK snippet printing a completion and a stream."""
    track = Track.parse(SOURCE)
    track.step("pip", "install", ".")
    track.step("pip", "install", "openai")
    serve = track.step("routerctl", "serve", "--demo")
    metrics = free_port()
    args = [*serve.argv[2:], "--metrics-listen", f"127.0.0.1:{metrics}"]
    with router_process(args, tmp_path) as demo:
        local = Local(tmp_path, {"8080": demo.port, "9090": metrics})
        assert_shows(serve.expected, demo.output(), local)
        ask(track, local, [READYZ])
        code, expected = track.code("python")
        result = subprocess.run(
            [sys.executable, "-c", local.text(code)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert_shows(expected, result.stdout, local)


# --- the page itself ------------------------------------------------------------------------
def test_three_tracks_and_links_that_resolve() -> None:
    """The three tracks are there, in order, and every link to a heading (here or in another
    doc) names one."""
    text = QUICKSTART.read_text(encoding="utf-8")
    level_two = [a for a, s in sections(text).items() if s.level == 2]
    assert level_two[:3] == [VM, KUBERNETES, SOURCE]
    links = re.findall(r"\]\(([\w.-]*)#([^)\s]+)\)", text)
    assert len(links) >= 5
    broken = [
        f"{doc}#{anchor}"
        for doc, anchor in links
        if anchor not in sections((QUICKSTART.parent / (doc or QUICKSTART.name)).read_text())
    ]
    assert broken == []


@pytest.mark.parametrize("doc", ["install-vm.md", "install-kubernetes.md"])
def test_install_guides_link_back_to_their_track(doc: str) -> None:
    """Each detailed guide points at its quickstart track, whose anchor exists."""
    text = (QUICKSTART.parent / doc).read_text(encoding="utf-8")
    anchors = re.findall(r"\]\(quickstart\.md#([^)\s]+)\)", text)
    assert anchors
    assert set(anchors) <= set(sections(QUICKSTART.read_text(encoding="utf-8")))
