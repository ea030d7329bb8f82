"""The push plan and its one transaction against real etcd: concurrent changes, op limit,
content comparison, and the diff's fields."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest

from appliance.configsvc.documents import Document
from appliance.configsvc.etcd_client import EtcdClient, Snapshot
from appliance.settings import ConfigServiceSettings, Settings
from routerctl.commands.config_push import (
    MAX_TXN_OPS,
    Change,
    Plan,
    PushConflict,
    PushError,
    apply_plan,
    diff_lines,
    file_documents,
    parse_push_file,
    plan_push,
    read_plan,
)
from tests.services import EtcdServer

pytestmark = pytest.mark.services

POLICY = """\
[[backends]]
id = "a"
url = "http://10.0.0.1:8000/v1"
{backend_extra}
[[models]]
name = "chat"
backends = [{{backend = "a"{route_extra}}}]

[[orgs]]
id = "acme"

[[keys]]
id = "k1"
org = "acme"
sha256 = "{sha}"
"""


@pytest.fixture
def prefix() -> str:
    return f"/plan-{uuid.uuid4().hex[:10]}/"


@pytest.fixture
def base(prefix: str) -> Settings:
    """The router's own file: only where etcd is."""
    return Settings(config_service=ConfigServiceSettings(prefix=prefix))


@pytest.fixture
async def client(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with EtcdClient([etcd_server.url], timeout_s=5) as opened:
        yield opened


def wanted(
    prefix: str, *, backend_extra: str = "", route_extra: str = "", sha: str = "a1" * 32
) -> dict[str, Document]:
    text = POLICY.format(backend_extra=backend_extra, route_extra=route_extra, sha=sha)
    settings = parse_push_file(text, "policy.toml", None, standalone=True)
    return file_documents(prefix, settings)


async def pushed(client: EtcdClient, base: Settings, prefix: str, **kw: str) -> int:
    plan = await read_plan(client, base, prefix, wanted(prefix, **kw), prune=True)
    return await apply_plan(client, plan)


async def test_a_change_between_read_and_write_fails_and_writes_nothing(
    client: EtcdClient, base: Settings, prefix: str
) -> None:
    """A document written by someone else after the plan was read makes the transaction's
    compare fail: PushConflict says to run again, and none of the plan's writes happened."""
    await pushed(client, base, prefix)
    plan = await read_plan(client, base, prefix, wanted(prefix, sha="b2" * 32), prune=True)
    assert [c.name for c in plan.changes] == ["keys/k1"]
    meanwhile = await client.put(f"{prefix}orgs/other", b'{"id": "other"}')
    with pytest.raises(PushConflict) as caught:
        await apply_plan(client, plan)
    assert str(caught.value) == (
        f"etcd changed under {prefix} since it was read at revision {plan.revision} "
        f"(now {meanwhile}); nothing was written: run again"
    )
    after = await client.get_prefix(prefix)
    assert after.revision == meanwhile
    assert b"a1a1a1a1" in after.items[f"{prefix}keys/k1"]
    # Run again: the new read sees the other document and prunes it in the same txn.
    again = await read_plan(client, base, prefix, wanted(prefix, sha="b2" * 32), prune=True)
    assert [(c.op, c.name) for c in again.changes] == [("-", "orgs/other"), ("~", "keys/k1")]
    assert await apply_plan(client, again) > meanwhile


async def test_an_override_written_meanwhile_also_conflicts(
    client: EtcdClient, base: Settings, prefix: str
) -> None:
    """The compare covers the whole prefix, overrides included: an override set by an
    operator between read and write makes the push run again rather than race it."""
    plan = await read_plan(client, base, prefix, wanted(prefix), prune=True)
    await client.put(f"{prefix}overrides/pin", b"{}")
    with pytest.raises(PushConflict):
        await apply_plan(client, plan)
    assert list((await client.get_prefix(prefix)).items) == [f"{prefix}overrides/pin"]


async def test_a_plan_applies_whole_at_one_revision(
    client: EtcdClient, base: Settings, prefix: str
) -> None:
    """Every put and delete of a push lands in one revision; overrides stay untouched."""
    await client.put(f"{prefix}overrides/pin", b"{}")
    await client.put(f"{prefix}orgs/old", b'{"id": "old"}')
    revision = await pushed(client, base, prefix)
    snapshot = await client.get_prefix(prefix)
    assert sorted(snapshot.items) == sorted(
        [f"{prefix}overrides/pin", *(f"{prefix}{n}" for n in
         ("backends/a", "models/chat", "orgs/acme", "keys/k1"))]
    )  # fmt: skip
    for key in snapshot.items:
        kv = await client.get(key)
        assert kv is not None
        assert (kv.mod_revision == revision) == ("overrides" not in key), key


async def test_equal_content_is_not_rewritten_and_an_invalid_document_is_replaced(
    client: EtcdClient, base: Settings, prefix: str
) -> None:
    """A document stored as TOML with the same content as FILE's is no change; one that does
    not parse is replaced, and the diff says so."""
    await client.put(f"{prefix}orgs/acme", b'id = "acme"\nrpm = 0\n')
    await client.put(f"{prefix}backends/a", b'{"id": "a", "url": 5}')
    plan = await read_plan(client, base, prefix, wanted(prefix), prune=True)
    assert "orgs/acme" not in [c.name for c in plan.changes]
    assert f"{prefix}orgs/acme" not in plan.puts
    assert plan.changes[0] == Change(
        "~", f"{prefix}backends/a", "backends/a", (("(document)", "invalid in etcd", "replaced"),)
    )


def test_the_diff_names_nested_fields_and_shortens_hashes(base: Settings, prefix: str) -> None:
    """Changed fields are shown by path, inside route lists and header tables, with `(absent)`
    for a side that has none and key hashes shortened to 8 characters."""
    current = {k: msgspec.json.encode(d.value) for k, d in wanted(prefix).items()}
    snapshot = Snapshot(revision=7, items=current)
    new = wanted(prefix, backend_extra='headers = {x-team = "ml"}', route_extra=", weight = 2.0",
                 sha="b2" * 32)  # fmt: skip
    plan = plan_push(base, prefix, new, snapshot, prune=True)
    assert diff_lines(plan) == [
        "~ backends/a",
        '    headers.x-team: (absent) -> "ml"',
        "~ models/chat",
        "    backends[0].weight: null -> 2.0",
        "~ keys/k1",
        "    sha256: a1a1a1a1… -> b2b2b2b2…",
    ]
    assert plan.problems == ()
    assert plan.summary() == "3 changes (0 added, 3 changed, 0 deleted)"


async def test_more_operations_than_etcd_allows_are_refused_before_writing(
    client: EtcdClient, prefix: str
) -> None:
    """A plan over etcd's 128 operations is refused by apply_plan without a request."""
    puts = {f"{prefix}keys/k{i}": b"{}" for i in range(MAX_TXN_OPS + 1)}
    plan = Plan(prefix, 1, puts, (), (), (), ())
    with pytest.raises(PushError, match=r"^129 writes exceed etcd's limit of 128"):
        await apply_plan(client, plan)
    assert (await client.get_prefix(prefix)).items == {}
    fits = Plan(prefix, (await client.get_prefix(prefix)).revision,
                dict(list(puts.items())[:MAX_TXN_OPS]), (), (), (), ())  # fmt: skip
    assert await apply_plan(client, fits) > 0
    assert len((await client.get_prefix(prefix)).items) == MAX_TXN_OPS
