"""`POST /v1/admin/config/reload` (operator): re-read the config file, apply what can change
live, keep running on the old config (and say why) when the file is invalid."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

import msgspec
from quart import Blueprint, Response

from appliance.auth.admin import AdminTokens
from appliance.configsvc.service import ReloadRefused, ReloadResult
from appliance.errors import ConfigInvalid
from appliance.http.admin import authorize
from appliance.telemetry.logging import get_logger

_log = get_logger("routerctl.admin")
_MAX_PROBLEMS = 20


class Reloader(Protocol):
    async def reload_file(self) -> ReloadResult: ...


class Reloaded(msgspec.Struct, frozen=True):
    status: Literal["applied"]
    source: str  # the file, or etcd
    revision: int
    restart_needed: list[str]  # static sections the file changed: they wait for a restart


def config_blueprint(
    reloader: Reloader, tokens: AdminTokens, on_reloaded: Callable[[], None] | None = None
) -> Blueprint:
    """`on_reloaded` runs after a reload this route applied (workers: reload the others)."""
    bp = Blueprint("config_admin", __name__)

    @bp.post("/v1/admin/config/reload")
    async def reload() -> Response:
        token_id = authorize(tokens, "operator")
        try:
            result = await reloader.reload_file()
        except ReloadRefused as exc:
            _log.error("config_reload_refused", actor=token_id, problems=exc.problems)
            shown = exc.problems[:_MAX_PROBLEMS]
            more = len(exc.problems) - len(shown)
            raise ConfigInvalid(
                "The config file is invalid; the running config is unchanged: "
                + "; ".join(shown)
                + (f"; and {more} more" if more > 0 else "")
            ) from None
        _log.info("config_reload_requested", actor=token_id)
        if on_reloaded is not None:
            on_reloaded()
        body = Reloaded("applied", result.source, result.revision, result.restart_needed)
        return Response(msgspec.json.encode(body), content_type="application/json")

    return bp
