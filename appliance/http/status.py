"""Status routes (no auth): liveness (no I/O) and readiness (component probes, cached)."""

from __future__ import annotations

import datetime as dt

from quart import Blueprint, Response
from quart import json as quart_json

from appliance import BUILD
from appliance.readiness import Readiness


def _build() -> dict[str, str]:
    return {"version": BUILD.version, "commit": BUILD.commit, "build_time": BUILD.build_time}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def status_blueprint(readiness: Readiness) -> Blueprint:
    bp = Blueprint("status", __name__)

    @bp.get("/v1/status/healthz")
    async def healthz() -> dict[str, object]:
        return {"status": "healthy", "timestamp": _now(), "build": _build()}

    @bp.get("/v1/status/readyz")
    async def readyz() -> Response:
        report = await readiness.check()
        body: dict[str, object] = {
            "status": "ready" if report.ready else "degraded",
            "components": report.components,
            "build": _build(),
            "timestamp": _now(),
        }
        if report.details:
            body["details"] = report.details
        if report.shutting_down:
            body["shutting_down"] = True
        return Response(
            quart_json.dumps(body),
            status=200 if report.ready else 503,
            content_type="application/json",
            headers={"cache-control": "no-store"},
        )

    return bp
