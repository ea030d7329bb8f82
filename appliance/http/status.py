"""Status routes (no auth): liveness now; readiness grows with the components (issue 7)."""

from __future__ import annotations

import datetime as dt

from quart import Blueprint

from appliance import BUILD


def status_blueprint() -> Blueprint:
    bp = Blueprint("status", __name__)

    @bp.get("/v1/status/healthz")
    async def healthz() -> dict[str, object]:
        return {
            "status": "healthy",
            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "build": {
                "version": BUILD.version,
                "commit": BUILD.commit,
                "build_time": BUILD.build_time,
            },
        }

    return bp
