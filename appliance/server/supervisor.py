"""`[server] workers = N`: one supervisor process and N workers serving its listening sockets.

The supervisor binds `server.listen` (and `admin_listen`) once and starts N copies of
`routerctl serve` that inherit the sockets; the kernel hands each new connection to one of
them, and a connection queued while a worker restarts waits for the others rather than
being refused. The supervisor serves `metrics_listen` itself, merging the workers' metrics
at each scrape; it forwards SIGTERM/SIGINT (drain) and SIGHUP (reload) to every worker,
restarts a worker that dies, and exits once all of them have drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from appliance.server.metrics_listener import MetricsListener
from appliance.server.sockets import bind_listener
from appliance.server.worker_role import ENV, WorkerRole
from appliance.settings import ADMIN_ON_PUBLIC, ServerSettings, Settings
from appliance.telemetry.logging import configure_logging, get_logger
from appliance.telemetry.metrics_merge import cumulative_only, merge_expositions

_log = get_logger("routerctl.supervisor")
_SCRAPE_TIMEOUT_S = 2.0
_MAX_RESTART_DELAY_S = 30.0
_KILL_GRACE_S = 15.0  # past the workers' own drain deadline


def supervise(
    settings: Settings, command: Sequence[str], on_started: Callable[[], None] | None
) -> int:
    """Run `server.workers` workers (each `command`) until SIGTERM/SIGINT; the exit code.

    OSError when a listen address cannot be bound (the caller reports it).
    """
    configure_logging(settings.telemetry)
    server = settings.server
    addresses = [server.listen]
    if server.admin_listen != ADMIN_ON_PUBLIC:
        addresses.append(server.admin_listen)
    socks: list[socket.socket] = []
    rundir = Path(tempfile.mkdtemp(prefix="routerctl-workers-"))
    try:
        socks.extend(_bind(address) for address in addresses)
        return asyncio.run(Supervisor(server, command, socks, rundir).run(on_started))
    finally:
        for sock in socks:
            sock.close()
        shutil.rmtree(rundir, ignore_errors=True)


def _bind(listen: str) -> socket.socket:
    sock = bind_listener(listen)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    def __init__(
        self,
        server: ServerSettings,
        command: Sequence[str],
        socks: Sequence[socket.socket],
        rundir: Path,
    ) -> None:
        self._server = server
        self._command = list(command)
        self._fds = tuple(sock.fileno() for sock in socks)
        self._rundir = rundir
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._ready: set[int] = set()  # workers that reported their start (serving unless exited)
        self._texts: dict[int, str] = {}  # each worker's last scrape
        self._retired = ""  # the counters of workers that died, so totals never go down
        self._stop = asyncio.Event()
        self._registry = CollectorRegistry()
        serving = Gauge("router_workers", "Worker processes serving.", registry=self._registry)
        serving.set_function(lambda: sum(self._procs[i].returncode is None for i in self._ready))
        self._restarts = Counter(
            "router_worker_restarts",
            "Workers the supervisor restarted after they exited on their own.",
            registry=self._registry,
        )

    async def run(self, on_started: Callable[[], None] | None) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_all)
        for sig in (signal.SIGHUP, signal.SIGUSR1):  # USR1: a worker applied an admin reload
            loop.add_signal_handler(sig, self._signal_all, signal.SIGHUP)
        async with AsyncExitStack() as stack:
            if self._server.metrics_listen:
                listener = MetricsListener(self._server.metrics_listen, self._render)
                await stack.enter_async_context(listener)
            started = await asyncio.gather(*(self._start(i) for i in self._indexes()))
            if not all(started) or self._stop.is_set():
                await self._drain()
                return 0 if all(started) else 1
            _log.info("workers_started", workers=len(self._procs), listen=self._server.listen)
            if on_started is not None:
                on_started()
            await self._watch()
            return await self._drain()

    def _indexes(self) -> range:
        return range(self._server.workers)

    async def _start(self, index: int) -> bool:
        """Start worker `index`; True once it serves, False if it exited first."""
        ready_r, ready_w = os.pipe()
        role = WorkerRole(
            index=index,
            count=self._server.workers,
            listen_fds=self._fds,
            ready_fd=ready_w,
            metrics_path=self._socket(index),
            supervisor_pid=os.getpid(),
        )
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._command,
                pass_fds=(*self._fds, ready_w),
                env={**os.environ, ENV: role.encode()},
            )
        finally:
            os.close(ready_w)
        self._procs[index] = proc
        self._ready.discard(index)
        try:
            ready = await asyncio.to_thread(os.read, ready_r, 1)  # b"" = exited first
        finally:
            os.close(ready_r)
        if not ready:
            code = await proc.wait()
            _log.error("worker_start_failed", worker=index, exit_code=code)
            return False
        self._ready.add(index)
        return True

    async def _watch(self) -> None:
        """Until asked to stop: restart any worker that exits, backing off if it keeps failing."""
        delays = dict.fromkeys(self._indexes(), 1.0)
        stop = asyncio.ensure_future(self._stop.wait())
        while not self._stop.is_set():
            exits = {asyncio.ensure_future(p.wait()): i for i, p in self._procs.items()}
            done, _ = await asyncio.wait({stop, *exits}, return_when=asyncio.FIRST_COMPLETED)
            for task in exits:
                task.cancel()
            for index in [exits[t] for t in done if t in exits]:
                if self._stop.is_set():
                    break
                self._retire(index)
                code = self._procs[index].returncode
                _log.error(
                    "worker_exited", worker=index, exit_code=code, restart_in_s=delays[index]
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delays[index])
                if self._stop.is_set():
                    break
                self._restarts.inc()
                ok = await self._start(index)
                delays[index] = 1.0 if ok else min(delays[index] * 2, _MAX_RESTART_DELAY_S)

    async def _drain(self) -> int:
        """SIGTERM every worker (each drains its requests), wait, SIGKILL what outlives that."""
        self._signal_all(signal.SIGTERM)
        deadline = self._server.shutdown_delay_s + self._server.graceful_shutdown_s + _KILL_GRACE_S
        waits = [p.wait() for p in self._procs.values()]
        try:
            codes = await asyncio.wait_for(asyncio.gather(*waits), deadline)
        except TimeoutError:
            self._signal_all(signal.SIGKILL)
            _log.error("workers_killed", detail=f"still running {deadline:g}s after SIGTERM")
            await asyncio.gather(*(p.wait() for p in self._procs.values()))
            return 1
        _log.info("stopped", workers=len(codes))
        return 0 if all(code == 0 for code in codes) else 1

    def _stop_all(self) -> None:
        self._stop.set()
        self._signal_all(signal.SIGTERM)  # at once: a worker may still be starting

    def _signal_all(self, sig: int) -> None:
        for proc in self._procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    def _socket(self, index: int) -> str:
        """Where worker `index` serves its own metrics for the merge."""
        return str(self._rundir / f"worker-{index}.sock")

    def _retire(self, index: int) -> None:
        last = self._texts.pop(index, None)
        if last is not None:
            kept = merge_expositions([self._retired, cumulative_only(last)])
            self._retired = kept.decode()

    async def _render(self) -> bytes:
        """The workers' metrics merged (counters summed: see telemetry/metrics_merge)."""

        async def scrape(index: int) -> None:
            path = self._socket(index)
            timeout = aiohttp.ClientTimeout(total=_SCRAPE_TIMEOUT_S)
            try:
                async with (
                    aiohttp.ClientSession(
                        connector=aiohttp.UnixConnector(path=path), timeout=timeout
                    ) as session,
                    session.get("http://worker/metrics") as response,
                ):
                    if response.status == 200:
                        self._texts[index] = await response.text()
            except (aiohttp.ClientError, TimeoutError):
                pass  # restarting or stuck: its last scrape stands in

        await asyncio.gather(*(scrape(i) for i in self._indexes()))
        own = generate_latest(self._registry).decode()
        return merge_expositions([*self._texts.values(), self._retired, own])
