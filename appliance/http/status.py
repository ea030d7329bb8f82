"""Status routes (no auth): liveness (no I/O) and readiness (component probes, cached)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec
from quart import Blueprint, Response

from appliance import BUILD
from appliance.readiness import ComponentStatus, Readiness

_JSON = "application/json"


class Build(msgspec.Struct, frozen=True):
    version: str
    commit: str
    build_time: str


class Liveness(msgspec.Struct, frozen=True):
    status: Literal["healthy"]
    timestamp: str  # ISO-8601, UTC
    build: Build


class Ready(msgspec.Struct, frozen=True, omit_defaults=True):
    """`details` (why a component is unhealthy) and `shutting_down` appear only when set."""

    status: Literal["ready", "degraded"]
    components: dict[str, ComponentStatus]
    build: Build
    timestamp: str
    details: dict[str, str] = {}
    shutting_down: bool = False


def _build() -> Build:
    return Build(BUILD.version, BUILD.commit, BUILD.build_time)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def status_blueprint(readiness: Readiness) -> Blueprint:
    bp = Blueprint("status", __name__)

    @bp.get("/v1/status/healthz")
    async def healthz() -> Response:
        body = Liveness("healthy", _now(), _build())
        return Response(_encode(body), content_type=_JSON)

    @bp.get("/v1/status/readyz")
    async def readyz() -> Response:
        report = await readiness.check()
        body = Ready(
            status="ready" if report.ready else "degraded",
            components=report.components,
            build=_build(),
            timestamp=_now(),
            details=report.details,
            shutting_down=report.shutting_down,
        )
        return Response(
            _encode(body),
            status=200 if report.ready else 503,
            content_type=_JSON,
            headers={"cache-control": "no-store"},
        )

    return bp


def _encode(body: msgspec.Struct) -> bytes:
    # Keys in name order and a space after each separator: the wire form these answers have
    # had since 0.1, which docs and operators' scripts match (not a hot route).
    return msgspec.json.format(msgspec.json.encode(body, order="sorted"), indent=0)
