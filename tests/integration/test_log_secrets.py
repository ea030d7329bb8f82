"""Logs: one JSON access line per request with its facts, and never a secret.

Every secret the router holds or is sent is a distinctive canary; all log output of a run
(structlog and stdlib loggers, at debug level, plus anything printed) is searched for them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest

from appliance.auth.keyring import hash_key
from tests.integration.router_harness import chat, running_router
from tests.log_capture import all_logs
from tests.reliability import Figures

BACKEND_KEY = "CANARY-backend-key-5d1e"
ORG_KEY = "rk-CANARY-org-key-8c2f"
WRONG_KEY = "rk-CANARY-wrong-key-77aa"
ADMIN_TOKEN = "CANARY-admin-token-3b7a"
WRONG_ADMIN_TOKEN = "CANARY-wrong-admin-token-e410"
ETCD_PASSWORD = "CANARY-etcd-password-91f0"
BODY_TEXT = "CANARY-prompt-text-c0de"
CANARIES = (
    BACKEND_KEY,
    ORG_KEY,
    WRONG_KEY,
    ADMIN_TOKEN,
    WRONG_ADMIN_TOKEN,
    ETCD_PASSWORD,
    BODY_TEXT,
    "CANARY",  # any part of one
)

EXTRA = f"""
[admin]
tokens = [{{ id = "ops", sha256 = "{hash_key(ADMIN_TOKEN)}", role = "operator" }}]

[[keys]]
id = "k-canary"
org = "acme"
sha256 = "{hash_key(ORG_KEY)}"
"""


@pytest.fixture
def log_output(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Every log line of the test, structlog's and stdlib's, rendered as in production."""
    monkeypatch.setenv("ROUTERCTL_ETCD_PASSWORD", ETCD_PASSWORD)
    with all_logs() as buffer:
        yield buffer


@pytest.mark.reliability("7.2", "canaries in an in-process router's logs, every logger at debug")
async def test_logs_carry_no_secret_and_one_access_line_per_request(
    log_output: io.StringIO, capsys: pytest.CaptureFixture[str], figures: Figures
) -> None:
    """Served, refused (wrong key, wrong admin token) and failed-upstream requests log their
    access lines with the listed fields, and no canary secret appears in any output."""
    async with running_router(extra=EXTRA, environ={"TEST_BACKEND_KEY": BACKEND_KEY}) as router:
        served = {"Authorization": f"Bearer {ORG_KEY}"}
        async with await router.post(
            "/v1/chat/completions", chat(BODY_TEXT, max_tokens=3), headers=served
        ) as response:
            assert response.status == 200
            served_id = response.headers["x-request-id"]
            await response.read()
        wrong = {"Authorization": f"Bearer {WRONG_KEY}"}
        async with await router.post("/v1/chat/completions", chat(), headers=wrong) as response:
            assert response.status == 401
            await response.read()
        failing = chat(f"[mock:status=500] {BODY_TEXT}")
        async with await router.post("/v1/chat/completions", failing, headers=served) as response:
            assert response.status == 502
            await response.read()
        for token, status in ((ADMIN_TOKEN, 200), (WRONG_ADMIN_TOKEN, 401)):
            async with router.session.get(
                f"{router.admin_url}/v1/admin/backends",
                headers={"Authorization": f"Bearer {token}"},
            ) as response:
                assert response.status == status
                await response.read()
        # The backend did get its key: the canary is live, not just unused.
        sent = router.mocks["m0"].requests()[-1]["headers"]
        assert isinstance(sent, dict)
        assert sent["Authorization"] == f"Bearer {BACKEND_KEY}"
    printed = capsys.readouterr()
    text = log_output.getvalue()
    outputs = (text, printed.out, printed.err)
    figures.add("log and printed bytes scanned", sum(len(o.encode()) for o in outputs), "bytes")
    figures.add("canary hits", sum(o.count(c) for o in outputs for c in CANARIES), bound=0)
    for canary in CANARIES:
        assert canary not in text, canary
        assert canary not in printed.out, canary
        assert canary not in printed.err, canary

    lines = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    access = [line for line in lines if line.get("logger") == "routerctl.access"]
    by_path: dict[tuple[str, int], list[dict[str, object]]] = {}
    for line in access:
        by_path.setdefault((str(line["path"]), int(line["status"])), []).append(line)
    [ok] = by_path[("/v1/chat/completions", 200)]
    assert ok["request_id"] == served_id
    assert ok["level"] == "info"
    assert ok["event"] == "request"
    assert (ok["org"], ok["key_id"], ok["model"]) == ("acme", "k-canary", "chat")
    assert (ok["backend"], ok["decision"], ok["attempts"]) == ("m0", "PRIMARY", 1)
    assert isinstance(ok["prompt_tokens"], int)
    assert ok["completion_tokens"] == 3
    assert isinstance(ok["duration_ms"], float)
    assert isinstance(ok["ttft_ms"], float)
    assert ok["outcome"] == "ok"
    [refused] = by_path[("/v1/chat/completions", 401)]
    assert (refused["outcome"], refused["key_id"]) == ("invalid_api_key", None)
    [failed] = by_path[("/v1/chat/completions", 502)]
    assert failed["backend"] == "m0"
    assert failed["key_id"] == "k-canary"
    assert len(by_path[("/v1/admin/backends", 200)]) == 1
    assert len(by_path[("/v1/admin/backends", 401)]) == 1
    # The error log of the failed attempt comes from a module-level logger: module loggers
    # are captured here too, so the canary search above saw everything.
    upstream = [line for line in lines if line["event"] == "upstream_failed"]
    assert upstream
    assert upstream[0]["backend"] == "m0"
    assert upstream[0]["level"] == "warning"
