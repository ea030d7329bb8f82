"""The HTTP/1.1 hardening refuses to start on a hypercorn it was not written for."""

from __future__ import annotations

import errno
import importlib.metadata

import hypercorn.asyncio.run
import pytest
from hypercorn.protocol.h11 import H11Protocol

from appliance.server import StartupError, h11_hardening, hypercorn_config, lingering_close
from appliance.settings import ServerSettings


def test_the_hypercorn_it_was_written_for_passes() -> None:
    """The pinned version, or no version metadata (a frozen binary), with the hooks in place."""
    h11_hardening.check_hypercorn(h11_hardening.WRITTEN_FOR)
    h11_hardening.check_hypercorn(None)


def test_another_hypercorn_version_is_a_startup_error() -> None:
    """A different hypercorn version stops the start with one line naming both versions."""
    with pytest.raises(StartupError, match=r"hypercorn 0\.19\.0 is installed.*hypercorn==0\.18"):
        h11_hardening.check_hypercorn("0.19.0")


def test_moved_internals_are_a_startup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """When an overridden internal is no longer used by hypercorn, the start is refused."""
    monkeypatch.setattr(h11_hardening, "_HOOKS", {H11Protocol.handle: ("_no_such_hook",)})
    with pytest.raises(StartupError, match="_no_such_hook"):
        h11_hardening.check_hypercorn(h11_hardening.WRITTEN_FOR)


def test_a_runner_that_no_longer_builds_tcp_servers_is_a_startup_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lingering close replaces hypercorn's connection class where its runner takes it
    from; when that name is gone, the start is refused instead of serving without it."""
    monkeypatch.delattr(hypercorn.asyncio.run, "TCPServer")
    with pytest.raises(StartupError, match="runner no longer creates connections"):
        h11_hardening.install()
    monkeypatch.undo()
    h11_hardening.install()
    assert hypercorn.asyncio.run.TCPServer is lingering_close.LingeringTCPServer  # type: ignore[attr-defined]


def test_building_the_server_config_checks_the_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """hypercorn_config, which every serve path calls first, refuses a foreign hypercorn."""
    monkeypatch.setattr(importlib.metadata, "version", lambda _: "0.17.3")
    with pytest.raises(StartupError, match=r"hypercorn 0\.17\.3"):
        hypercorn_config(ServerSettings())


def test_server_config_carries_the_head_deadline() -> None:
    """`header_timeout_s` reaches the protocol through hypercorn's config."""
    config = hypercorn_config(ServerSettings(header_timeout_s=2.5))
    assert config.header_timeout_s == 2.5


class _GoneWriter:
    """A stream writer whose peer went away after the half-close: closing it raises
    ENOTCONN, which hypercorn's own close does not expect."""

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")


class _AtEof:
    def at_eof(self) -> bool:
        return True


class _IdleTask:
    stopped = False

    async def stop(self) -> None:
        self.stopped = True


async def test_a_client_gone_after_the_half_close_is_closed_quietly() -> None:
    """The full close of a connection whose client left after the half-close raises nothing
    (an unhandled ENOTCONN was a traceback in the log) and still stops its idle timer."""
    server = object.__new__(lingering_close.LingeringTCPServer)
    idle = _IdleTask()
    server.reader, server.writer, server.idle_task = _AtEof(), _GoneWriter(), idle  # type: ignore[assignment]
    await server._close()
    assert idle.stopped
