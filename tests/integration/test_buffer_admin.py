"""`/v1/admin/buffer` and `/v1/admin/buffer/replay` on a real router: roles, bodies, results."""

from __future__ import annotations

from appliance.auth.keyring import hash_key
from tests.integration.router_harness import RouterUnderTest, chat, running_router

OPERATOR = "rka-buffer-operator"
VIEWER = "rka-buffer-viewer"
ADMIN = f"""
[admin]
tokens = [
    {{ id = "oncall", sha256 = "{hash_key(OPERATOR)}", role = "operator" }},
    {{ id = "watcher", sha256 = "{hash_key(VIEWER)}", role = "viewer" }},
]
"""
KAFKA_DOWN = '\n[usage]\nsink = "kafka"\nkafka_bootstrap = ["127.0.0.1:1"]\n'


async def call(
    router: RouterUnderTest, method: str, path: str, token: str | None, body: object = None
) -> tuple[int, dict[str, object]]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with router.session.request(
        method, f"{router.admin_url}{path}", json=body, headers=headers
    ) as response:
        return response.status, await response.json()


async def test_inspect_shows_waiting_records_per_topic_and_sink() -> None:
    """A viewer sees the waiting records, their sink and the publisher's failures."""
    async with running_router(extra=ADMIN + KAFKA_DOWN) as router:
        for _ in range(3):
            response = await router.post("/v1/chat/completions", chat())
            await response.read()
        status, body = await call(router, "GET", "/v1/admin/buffer", VIEWER)
    assert status == 200
    assert body["records"] == 3
    assert body["topics"]["usage"]["sink"] == "kafka"  # type: ignore[index]
    assert body["sinks"]["kafka"]["records"] == 3  # type: ignore[index]
    assert str(body["path"]).endswith("outbox.sqlite")


async def test_replay_needs_an_operator_and_a_valid_body() -> None:
    """No token 401, viewer 403, unknown field or bad limit 400 naming it."""
    async with running_router(extra=ADMIN) as router:
        path = "/v1/admin/buffer/replay"
        assert (await call(router, "POST", path, None, {}))[0] == 401
        assert (await call(router, "POST", path, VIEWER, {}))[0] == 403
        status, body = await call(router, "POST", path, OPERATOR, {"limt": 3})
        assert status == 400
        assert body["error"]["param"] == "limt"  # type: ignore[index]
        status, body = await call(router, "POST", path, OPERATOR, {"limit": 0})
        assert (status, body["error"]["param"]) == (400, "limit")  # type: ignore[index]


async def test_replay_publishes_now_and_reports_what_is_left() -> None:
    """With a working sink, replay empties the outbox; dry run counts without sending."""
    async with running_router(extra=ADMIN) as router:
        for _ in range(4):
            response = await router.post("/v1/chat/completions", chat())
            await response.read()
        status, dry = await call(
            router, "POST", "/v1/admin/buffer/replay", OPERATOR, {"dry_run": True, "limit": 2}
        )
        assert (status, dry["dry_run"], dry["sink"]) == (200, True, "file")
        assert dry["published"] == min(2, int(dry["remaining"]))  # type: ignore[call-overload]
        status, done = await call(router, "POST", "/v1/admin/buffer/replay", OPERATOR, {})
    assert (status, done["remaining"]) == (200, 0)


async def test_replay_against_a_dead_sink_is_503_and_keeps_records() -> None:
    """Kafka unreachable: 503 usage_sink_unavailable, and every record is still buffered."""
    async with running_router(extra=ADMIN + KAFKA_DOWN) as router:
        response = await router.post("/v1/chat/completions", chat())
        await response.read()
        status, body = await call(router, "POST", "/v1/admin/buffer/replay", OPERATOR, {})
        assert status == 503
        assert body["error"]["code"] == "usage_sink_unavailable"  # type: ignore[index]
        stats = await router.state.usage.outbox.stats()
    assert stats.records == 1
