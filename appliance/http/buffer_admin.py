"""Admin routes for the usage outbox: what waits in it (viewer), and publish it now (operator).

`routerctl buffer inspect|replay --via-admin` calls these on a running router, whose state
dir the offline tools must not touch.
"""

from __future__ import annotations

from typing import Annotated, Protocol

import msgspec
from msgspec import Meta, Struct
from quart import Blueprint, Response

from appliance.auth.admin import AdminTokens
from appliance.errors import UsageSinkUnavailable
from appliance.http.admin import authorize, parse_body
from appliance.telemetry.logging import get_logger
from appliance.usage.buffer_service import LiveBufferReport, ReplayResult
from appliance.usage.ports import SinkError

_log = get_logger("routerctl.admin")


class BufferControl(Protocol):
    async def report(self) -> LiveBufferReport: ...

    async def replay(self, limit: int | None, dry_run: bool) -> ReplayResult: ...


class ReplayBody(Struct, forbid_unknown_fields=True, kw_only=True):
    dry_run: bool = False
    limit: Annotated[int, Meta(ge=1)] | None = None


def buffer_blueprint(buffer: BufferControl, tokens: AdminTokens) -> Blueprint:
    bp = Blueprint("buffer_admin", __name__)

    @bp.get("/v1/admin/buffer")
    async def inspect() -> Response:
        authorize(tokens, "viewer")
        return _json(await buffer.report())

    @bp.post("/v1/admin/buffer/replay")
    async def replay() -> Response:
        who = authorize(tokens, "operator")
        body = await parse_body(ReplayBody)
        try:
            result = await buffer.replay(body.limit, body.dry_run)
        except SinkError as exc:
            raise UsageSinkUnavailable(f"{exc}; the records stay in the outbox.") from None
        _log.info(
            "usage_buffer_replayed",
            actor=who,
            dry_run=result.dry_run,
            published=result.published,
            remaining=result.remaining,
        )
        return _json(result)

    return bp


def _json(value: object) -> Response:
    return Response(msgspec.json.encode(value), content_type="application/json")
