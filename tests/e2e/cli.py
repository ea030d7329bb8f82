"""Run the installed `routerctl` as a subprocess, as an operator would, and always reap it.

Each helper takes `command`, the argv prefix to run (default: the installed CLI), so the same
helpers drive the PyInstaller binary in test_binary.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from tests.services import free_port

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def routerctl_command() -> list[str]:
    script = Path(sys.executable).parent / "routerctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "routerctl"]


def run_cli(
    *args: str, env: dict[str, str] | None = None, command: Sequence[str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(command or routerctl_command()), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


class RouterProcess:
    def __init__(
        self, process: subprocess.Popen[str], port: int, log: Path, admin_port: int
    ) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.admin_port = admin_port
        self.admin_url = f"http://127.0.0.1:{admin_port}"  # the admin routes' own listener
        self.log = log

    def url_for(self, path: str) -> str:
        """The URL of `path` on the listener that serves it (admin routes: the admin one)."""
        return (self.admin_url if path.startswith("/v1/admin/") else self.url) + path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self, timeout: float = 15) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def kill_group(process: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and everything in its group, then reap it. A one-file binary is a
    bootloader whose child runs Python; SIGKILL cannot be forwarded, so the child would live on."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the leader is unreaped, so its pid is ours
    process.wait(10)


@contextmanager
def router_process(
    args: Sequence[str],
    tmp: Path,
    env: dict[str, str] | None = None,
    command: Sequence[str] | None = None,
) -> Iterator[RouterProcess]:
    """Start `routerctl serve ARGS --listen <free port> --admin-listen <free port>` (unless
    ARGS has its own), wait for healthz, reap on exit.

    A port found free can be taken before the router binds it (by another test's process,
    or as the source port of any outgoing connection): when the router says so and both
    ports were picked here, it is started again on new ones, at most `_PORT_TRIES` times."""
    for attempt in range(1, _PORT_TRIES + 1):
        router = _start(args, tmp, env, command)
        try:
            _wait_healthy(router)
        except _PortTaken:
            kill_group(router.process)
            if attempt < _PORT_TRIES and "--admin-listen" not in args:
                continue
            raise
        except BaseException:
            kill_group(router.process)
            raise
        try:
            yield router
        finally:
            kill_group(router.process)
        return


_PORT_TRIES = 3


class _PortTaken(RuntimeError):
    """The router could not bind a port that was free a moment before."""


def _start(
    args: Sequence[str],
    tmp: Path,
    env: dict[str, str] | None,
    command: Sequence[str] | None,
) -> RouterProcess:
    port, admin_port = free_port(), free_port()
    log = tmp / f"router-{port}.log"
    listeners = ["--listen", f"127.0.0.1:{port}"]
    if "--admin-listen" in args:  # the caller's own ("public": admin_url is url)
        given = args[list(args).index("--admin-listen") + 1]
        admin_port = port if given == "public" else int(given.rsplit(":", 1)[1])
    else:
        listeners += ["--admin-listen", f"127.0.0.1:{admin_port}"]
    with log.open("w") as sink:
        process = subprocess.Popen(
            [*(command or routerctl_command()), "serve", *args, *listeners],
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # a group of its own: see kill_group
        )
    return RouterProcess(process, port, log, admin_port)


def _wait_healthy(router: RouterProcess, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if router.process.poll() is not None:
            output = router.output()
            failure = _PortTaken if "address already in use" in output else RuntimeError
            raise failure(f"router exited early:\n{output}")
        try:
            with _HTTP.open(f"{router.url}/v1/status/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"router not healthy in {timeout}s:\n{router.output()}")


class MockProcess:
    """`routerctl mock-backend` as its own process on a fixed port: started, SIGKILLed and
    started again on the same port (a backend that dies and comes back)."""

    def __init__(self, tmp: Path, command: Sequence[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._tmp = tmp
        self._command = command
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        """Start the process; `wait_ready` waits for it (several can start at once)."""
        log = self._tmp / f"mock-{self.port}.log"
        with log.open("a") as sink:
            self.process = subprocess.Popen(
                [*(self._command or routerctl_command()), "mock-backend", "--port", str(self.port)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a group of its own: see kill_group
            )

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                break
            try:
                with _HTTP.open(f"http://127.0.0.1:{self.port}/health", timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError((self._tmp / f"mock-{self.port}.log").read_text())

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no drain, connections cut by the kernel."""
        if self.process is not None:
            kill_group(self.process)

    def stop(self) -> None:
        if self.process is None or not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            kill_group(self.process)


@contextmanager
def mock_backend_process(tmp: Path, command: Sequence[str] | None = None) -> Iterator[str]:
    """`routerctl mock-backend` as its own process; yields its base URL (with /v1)."""
    mock = MockProcess(tmp, command)
    try:
        mock.launch()
        mock.wait_ready()
        yield mock.url
    finally:
        mock.stop()
