"""The do-nothing proxy: the stack's ceiling that routerctl is measured against.

What a competent engineer writes as a minimal Quart forwarder on the same stack as routerctl:
hypercorn on uvloop, one pooled aiohttp ClientSession opened in `while_serving`, every POST
forwarded to the same path on the upstream, the answer relayed whole, or chunk by chunk with
`iter_any()` when the upstream answers `text/event-stream`. No auth, no parsing, no metrics.
The hypercorn settings mirror routerctl's (keep-alive, backlog, no access log) so the two rows
differ only in what the application does.

With WORKERS > 1 the listening socket is bound once and that many forked processes serve it,
as routerctl's `[server] workers` does (and as hypercorn's own multi-worker mode does).

Usage: python bench/noop_proxy.py PORT UPSTREAM_BASE_URL [WORKERS]
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncGenerator, AsyncIterator

import aiohttp
import uvloop
from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart, Response, request


def create_app(upstream: str) -> Quart:
    app = Quart("noop_proxy")
    sessions: list[aiohttp.ClientSession] = []

    @app.while_serving
    async def lifecycle() -> AsyncGenerator[None, None]:
        connector = aiohttp.TCPConnector(limit=1024, limit_per_host=0, keepalive_timeout=30.0)
        sessions.append(aiohttp.ClientSession(connector=connector, auto_decompress=False))
        yield
        await sessions.pop().close()

    @app.post("/<path:path>")
    async def forward(path: str) -> Response:
        body = await request.get_data(cache=False)
        upstream_response = await sessions[0].post(
            f"{upstream}/{path}", data=body, headers={"content-type": "application/json"}
        )
        content_type = upstream_response.headers.get("content-type", "application/json")
        if not content_type.startswith("text/event-stream"):
            async with upstream_response:
                payload = await upstream_response.read()
            return Response(payload, status=upstream_response.status, content_type=content_type)
        response = Response(
            _relay(upstream_response),
            status=upstream_response.status,
            content_type=content_type,
            headers={"cache-control": "no-cache"},
        )
        response.timeout = None
        return response

    return app


async def _relay(upstream_response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    async with upstream_response:
        async for chunk in upstream_response.content.iter_any():
            yield chunk


def hypercorn_config(port: int, fd: int | None = None) -> Config:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"] if fd is None else [f"fd://{fd}"]
    config.accesslog = None
    config.errorlog = "-"
    config.keep_alive_timeout = 75.0
    config.keep_alive_max_requests = 10_000
    config.backlog = 2048
    config.read_timeout = None
    return config


async def main(port: int, upstream: str, fd: int | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = create_app(upstream.rstrip("/"))
    await serve(app, hypercorn_config(port, fd), shutdown_trigger=stop.wait, mode="asgi")


def run(port: int, upstream: str, fd: int | None = None) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main(port, upstream, fd))


def run_workers(port: int, upstream: str, workers: int) -> None:
    """Bind once, fork `workers` servers of that socket, forward SIGTERM/SIGINT, reap them."""
    sock = socket.create_server(("127.0.0.1", port), backlog=2048)
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # no event loop exists yet in the parent: forking is safe here
            run(port, upstream, sock.fileno())
            os._exit(0)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        os.waitpid(child, 0)


if __name__ == "__main__":
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    if count > 1:
        run_workers(int(sys.argv[1]), sys.argv[2], count)
    else:
        run(int(sys.argv[1]), sys.argv[2])
