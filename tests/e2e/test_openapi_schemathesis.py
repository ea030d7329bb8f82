"""schemathesis against a running router: every documented operation, generated requests
(valid and invalid), bounded and seeded. No answer is a 5xx, and every answer conforms to the
document the router serves at /v1/openapi.json (status, content type, headers, body).

The schemathesis pytest plugin's lazy `from_fixture` loader fails under pytest 9 (it sets a
node's `_nodeid`), so each operation is a plain parametrized test running its own
hypothesis strategy."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from appliance.auth.keyring import hash_key
from appliance.http.openapi import build_document, encode_document
from tests.e2e.cli import RouterProcess, router_process

OPERATOR = "rka-e2e-schemathesis-operator"
ORG_KEY = "rk-e2e-schemathesis-key"
MODEL = "m"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,  # an invalid request is a 4xx, never relayed or applied
    ignored_auth,  # the same request without credentials, or with wrong ones, is a 401/403
]


def _config(tmp: Path, mock_url: str) -> Path:
    path = tmp / "router.toml"
    path.write_text(
        f"""
[server]
metrics_listen = ""

[state]
dir = "{tmp / "state"}"

[usage]
sink = "none"

[admin]
tokens = [{{ id = "fuzz", sha256 = "{hash_key(OPERATOR)}", role = "operator" }}]

[[backends]]
id = "mock"
url = "{mock_url}"

[[models]]
name = "{MODEL}"
backends = [{{ backend = "mock" }}]

[[orgs]]
id = "acme"

[[keys]]
id = "k"
org = "acme"
sha256 = "{hash_key(ORG_KEY)}"
"""
    )
    return path


@pytest.fixture(scope="module")
def router(mock_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    with router_process(["--config", str(_config(tmp, mock_url))], tmp) as running:
        yield running


# Parametrized from the document the code builds; the test checks the router serves it.
SCHEMA = schemathesis.openapi.from_dict(build_document())
# Invalid requests only where there is something to make invalid (a body or a parameter).
CASES = [
    (operation, mode)
    for operation in (result.ok() for result in SCHEMA.get_all_operations())
    for mode in GenerationMode
    if mode.is_positive or operation.body or operation.path_parameters or operation.query
]


@pytest.mark.parametrize(
    ("operation", "mode"), CASES, ids=[f"{op.label} {mode.value}" for op, mode in CASES]
)
def test_router_conforms_to_its_document(
    operation: Any, mode: GenerationMode, router: RouterProcess
) -> None:
    """Generated requests to one operation, on the listener serving it, get no 5xx and
    answers the document describes."""
    admin = operation.path.startswith("/v1/admin/")
    router_url = router.admin_url if admin else router.url
    with urllib.request.urlopen(f"{router_url}/v1/openapi.json", timeout=10) as served:  # noqa: S310
        assert served.read() == encode_document(build_document())
    token = OPERATOR if admin else ORG_KEY

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=8,
        derandomize=True,  # a fixed seed: the same requests on every run
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        if mode.is_positive and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = MODEL  # reach the backend, not only "no such model"
        case.call_and_validate(
            base_url=router_url,
            headers={"Authorization": f"Bearer {token}"},
            checks=CHECKS,
            timeout=10,
        )

    run()
