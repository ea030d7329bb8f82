"""hypercorn's config from `[server]`, with the HTTP/1.1 hardening installed."""

from __future__ import annotations

import logging

from hypercorn.utils import LifespanFailureError

from appliance.server import h11_hardening
from appliance.server.h11_hardening import HardenedConfig
from appliance.settings import ADMIN_ON_PUBLIC, ServerSettings, parse_listen


def hypercorn_config(
    server: ServerSettings, listen_fds: tuple[int, ...] | None = None
) -> HardenedConfig:
    """The config to serve with; raises StartupError on a hypercorn the hardening does not fit.

    `listen_fds`: serve the listening sockets inherited from the supervisor (`listen`'s,
    then `admin_listen`'s when it has its own) rather than binding them.

    Installing the hardening here means every server built from this config, the tests'
    included, speaks the same HTTP/1.1.
    """
    h11_hardening.install()
    config = HardenedConfig()
    config.bind = [_bind(server.listen)]
    if server.admin_listen != ADMIN_ON_PUBLIC:  # one server, two listeners: see http/listeners
        config.bind.append(_bind(server.admin_listen))
    if listen_fds is not None:
        config.bind = [f"fd://{fd}" for fd in listen_fds]
    config.worker_class = "uvloop"
    config.graceful_timeout = server.graceful_shutdown_s
    config.keep_alive_timeout = server.keep_alive_timeout_s
    config.keep_alive_max_requests = server.keep_alive_max_requests
    config.h11_max_incomplete_size = server.max_header_bytes
    config.header_timeout_s = server.header_timeout_s
    config.backlog = 2048
    config.accesslog = None  # our edge middleware writes the access log
    errorlog = logging.getLogger("hypercorn.error")  # one handler: our root config
    errorlog.addFilter(_drop_startup_failure)
    config.errorlog = errorlog
    # hypercorn's own read timeout is for idle keep-alive; heads are timed by the hardened
    # protocol (header_timeout_s), bodies by EdgeMiddleware.
    config.read_timeout = None
    return config


def _bind(address: str) -> str:
    host, port = parse_listen(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _drop_startup_failure(record: logging.LogRecord) -> bool:
    # `routerctl serve` reports a failed start as one line (StartupError); hypercorn's own
    # log of it would add a traceback before that line.
    failure = record.exc_info[1] if record.exc_info else None
    return not isinstance(failure, LifespanFailureError)
