"""`routerctl config push` and `config show` as an operator runs them, against a real etcd."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from appliance.configsvc.documents import parse_document
from appliance.configsvc.etcd_client import EtcdClient, Snapshot
from appliance.settings import ApiKey, Backend
from tests.e2e.cli import run_cli
from tests.services import EtcdServer, free_port

SHA_K1 = "a1" * 32
SHA_K2 = "b2" * 32


@pytest.fixture
def prefix() -> str:
    return f"/push-{uuid.uuid4().hex[:10]}/"


@pytest.fixture
def router_toml(etcd: EtcdServer, prefix: str, tmp_path: Path) -> Path:
    """The router's own file: where etcd is, and a [server] section."""
    path = tmp_path / "router.toml"
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[config_service]\netcd_endpoints = ["{etcd.url}"]\nprefix = "{prefix}"\n'
    )
    return path


def policy(
    tmp: Path, *, weight: float = 1.0, keys: tuple[str, ...] = ("k1",), extra: str = ""
) -> Path:
    """A push file: two backends, one model over both, one org and its keys."""
    shas = {"k1": SHA_K1, "k2": SHA_K2}
    text = f"""\
[[backends]]
id = "vllm-a"
url = "http://10.0.0.1:8000/v1"
weight = {weight}

[[backends]]
id = "vllm-b"
url = "http://10.0.0.2:8000/v1"

[[models]]
name = "chat"
backends = [{{backend = "vllm-a"}}, {{backend = "vllm-b", upstream_model = "llama"}}]

[[orgs]]
id = "acme"
rpm = 600
"""
    for key in keys:
        text += f'\n[[keys]]\nid = "{key}"\norg = "acme"\nsha256 = "{shas[key]}"\n'
    path = tmp / f"policy-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(text + extra)
    return path


def push(file: Path, router: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("config", "push", str(file), "--config", str(router), *args)


def read(etcd: EtcdServer, prefix: str) -> Snapshot:
    async def go() -> Snapshot:
        async with EtcdClient([etcd.url], timeout_s=5) as client:
            return await client.get_prefix(prefix)

    return asyncio.run(go())


def put(etcd: EtcdServer, key: str, value: bytes) -> int:
    async def go() -> int:
        async with EtcdClient([etcd.url], timeout_s=5) as client:
            return await client.put(key, value)

    return asyncio.run(go())


def pushed_revision(stdout: str) -> int:
    match = re.search(r" at revision (\d+)\n\Z", stdout)
    assert match, stdout
    return int(match.group(1))


def test_push_creates_one_document_per_object(
    etcd: EtcdServer, router_toml: Path, prefix: str, tmp_path: Path
) -> None:
    """A first push prints `+` for every object, writes them in one revision, and each
    document reads back as the router parses it."""
    result = push(policy(tmp_path), router_toml)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[:-1] == [
        "+ backends/vllm-a",
        "+ backends/vllm-b",
        "+ models/chat",
        "+ orgs/acme",
        "+ keys/k1",
    ]
    revision = pushed_revision(result.stdout)
    assert lines[-1] == (
        f"pushed 5 changes (5 added, 0 changed, 0 deleted) to {prefix} at revision {revision}"
    )
    snapshot = read(etcd, prefix)
    assert snapshot.revision == revision
    assert sorted(snapshot.items) == [
        f"{prefix}{name}"
        for name in ("backends/vllm-a", "backends/vllm-b", "keys/k1", "models/chat", "orgs/acme")
    ]
    docs = {k: parse_document(prefix, k, v).value for k, v in snapshot.items.items()}
    assert docs[f"{prefix}backends/vllm-a"] == Backend(id="vllm-a", url="http://10.0.0.1:8000/v1")
    assert docs[f"{prefix}keys/k1"] == ApiKey(id="k1", org="acme", sha256=SHA_K1)


def test_a_changed_weight_is_the_only_change(
    etcd: EtcdServer, router_toml: Path, prefix: str, tmp_path: Path
) -> None:
    """Pushing again with one weight changed shows exactly that field and rewrites only that
    document; pushing the same file once more is `no changes` and writes nothing."""
    first = push(policy(tmp_path), router_toml)
    assert first.returncode == 0, first.stderr
    second = push(policy(tmp_path, weight=2.5), router_toml)
    assert second.returncode == 0, second.stderr
    revision = pushed_revision(second.stdout)
    assert second.stdout.splitlines() == [
        "~ backends/vllm-a",
        "    weight: 1.0 -> 2.5",
        f"pushed 1 change (0 added, 1 changed, 0 deleted) to {prefix} at revision {revision}",
    ]
    assert revision == pushed_revision(first.stdout) + 1

    async def mod_revisions() -> dict[str, int]:
        async with EtcdClient([etcd.url], timeout_s=5) as client:
            found = {}
            for name in ("backends/vllm-a", "backends/vllm-b", "models/chat"):
                kv = await client.get(prefix + name)
                assert kv is not None
                found[name] = kv.mod_revision
            return found

    assert asyncio.run(mod_revisions()) == {
        "backends/vllm-a": revision,
        "backends/vllm-b": pushed_revision(first.stdout),
        "models/chat": pushed_revision(first.stdout),
    }
    again = push(policy(tmp_path, weight=2.5), router_toml)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"no changes ({prefix} at revision {revision})\n"
    assert read(etcd, prefix).revision == revision


def test_prune_deletes_a_dropped_key_and_never_touches_overrides(
    etcd: EtcdServer, router_toml: Path, prefix: str, tmp_path: Path
) -> None:
    """A key FILE no longer has is deleted (`-`) in the push's transaction; with --no-prune
    it stays. Overrides and keys the router does not read are left alone either way."""
    assert push(policy(tmp_path, keys=("k1", "k2")), router_toml).returncode == 0
    override = put(etcd, f"{prefix}overrides/pin-chat", b'{"id": "pin-chat"}')
    foreign = put(etcd, f"{prefix}notes/readme", b"hello")
    del override, foreign

    kept = push(policy(tmp_path, keys=("k1",)), router_toml, "--no-prune")
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.splitlines() == [
        "kept 1 documents FILE does not have (--no-prune)",
        f"no changes ({prefix} at revision {read(etcd, prefix).revision})",
    ]
    assert f"{prefix}keys/k2" in read(etcd, prefix).items

    pruned = push(policy(tmp_path, keys=("k1",)), router_toml)
    assert pruned.returncode == 0, pruned.stderr
    revision = pushed_revision(pruned.stdout)
    assert pruned.stdout.splitlines()[:-1] == ["- keys/k2"]
    items = read(etcd, prefix).items
    assert f"{prefix}keys/k2" not in items
    assert items[f"{prefix}keys/k1"]
    assert items[f"{prefix}overrides/pin-chat"] == b'{"id": "pin-chat"}'
    assert items[f"{prefix}notes/readme"] == b"hello"
    assert read(etcd, prefix).revision == revision


def test_dry_run_prints_the_diff_and_writes_nothing(
    etcd: EtcdServer, router_toml: Path, prefix: str, tmp_path: Path
) -> None:
    """--dry-run prints the same diff a push would (by kind, then name), says it wrote nothing,
    and etcd's revision does not move."""
    assert push(policy(tmp_path), router_toml).returncode == 0
    before = read(etcd, prefix)
    result = push(policy(tmp_path, weight=3.0, keys=("k2",)), router_toml, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "~ backends/vllm-a",
        "    weight: 1.0 -> 3.0",
        "- keys/k1",
        "+ keys/k2",
        f"dry run: 3 changes (1 added, 1 changed, 1 deleted) not written ({prefix} at "
        f"revision {before.revision})",
    ]
    assert read(etcd, prefix) == before


def test_an_invalid_file_writes_nothing_and_names_its_lines(
    etcd: EtcdServer, router_toml: Path, prefix: str, tmp_path: Path
) -> None:
    """A file with a bad URL and a model naming an unknown backend fails before etcd is
    asked, one `file:line: key: reason` per problem, exit 1; etcd is unchanged."""
    assert push(policy(tmp_path), router_toml).returncode == 0
    before = read(etcd, prefix)
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[backends]]\nid = "vllm-a"\nurl = "10.0.0.1:8000"\n\n'
        '[[models]]\nname = "chat"\nbackends = [{backend = "vllm-x"}]\n'
    )
    result = push(bad, router_toml)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{bad}:3: backends[0].url: must start with http:// or https://",
        f"{bad}:7: models[0].backends[0].backend: unknown backend 'vllm-x'",
    ]
    assert read(etcd, prefix) == before


def test_a_section_that_is_not_pushed_is_refused(router_toml: Path, tmp_path: Path) -> None:
    """[server] or [routing] in a push file would silently not reach the routers: refused
    with its line."""
    path = policy(tmp_path, extra="\n[routing]\nmax_retries = 1\n")
    result = push(path, router_toml)
    assert result.returncode == 1
    line = len(path.read_text().splitlines()) - 1
    assert result.stderr.splitlines() == [
        f"{path}:{line}: routing: not pushed to etcd: a push file holds only [[backends]], "
        "[[models]], [[orgs]] and [[keys]]; the rest stays in the router's file"
    ]


def test_no_prune_checks_references_against_what_etcd_holds(
    etcd: EtcdServer, router_toml: Path, prefix: str, tmp_path: Path
) -> None:
    """A file with only a key for an org that lives in etcd: whole (prune) it is refused with
    a hint, with --no-prune it is added; a key for an org nobody has is refused by name."""
    assert push(policy(tmp_path), router_toml).returncode == 0
    path = tmp_path / "key.toml"
    path.write_text(f'[[keys]]\nid = "k2"\norg = "acme"\nsha256 = "{SHA_K2}"\n')
    whole = push(path, router_toml)
    assert whole.returncode == 1
    assert whole.stderr.splitlines()[0] == f"{path}:3: keys[0].org: unknown org 'acme'"
    assert "push with --no-prune" in whole.stderr.splitlines()[-1]

    added = push(path, router_toml, "--no-prune")
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines()[:2] == [
        "+ keys/k2",
        "kept 5 documents FILE does not have (--no-prune)",
    ]
    before = read(etcd, prefix)
    path.write_text(f'[[keys]]\nid = "k3"\norg = "nobody"\nsha256 = "{"c3" * 32}"\n')
    refused = push(path, router_toml, "--no-prune")
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        f"routerctl: error: routers would refuse the config under {prefix} after this push; "
        "nothing was written:",
        f"{prefix}keys/k3.org: unknown org 'nobody'",
    ]
    assert read(etcd, prefix) == before


def test_backend_variables_are_checked_unless_skipped(
    etcd: EtcdServer, router_toml: Path, prefix: str, tmp_path: Path
) -> None:
    """A backend's api_key_env unset here fails like `config validate`; --skip-env pushes the
    variable's name (never a value)."""
    variable = f"PUSH_TEST_KEY_{uuid.uuid4().hex[:6].upper()}"
    path = policy(tmp_path)
    path.write_text(
        path.read_text().replace("weight = 1.0", f'weight = 1.0\napi_key_env = "{variable}"')
    )
    result = push(path, router_toml)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{path}:5: backends[0].api_key_env: environment variable {variable} is not set"
    ]
    assert read(etcd, prefix).items == {}
    skipped = push(path, router_toml, "--skip-env")
    assert skipped.returncode == 0, skipped.stderr
    stored = json.loads(read(etcd, prefix).items[f"{prefix}backends/vllm-a"])
    assert stored["api_key_env"] == variable


def test_more_writes_than_one_transaction_holds_are_refused(
    etcd: EtcdServer, router_toml: Path, prefix: str, tmp_path: Path
) -> None:
    """129 documents exceed etcd's 128 operations per transaction: the push fails with what
    to do and nothing is written."""
    path = tmp_path / "many.toml"
    path.write_text(
        '[[orgs]]\nid = "acme"\n'
        + "".join(f'[[keys]]\nid = "k{i}"\norg = "acme"\nsha256 = "{i:064x}"\n' for i in range(128))
    )
    result = push(path, router_toml)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "routerctl: error: 129 writes exceed etcd's limit of 128 per transaction; nothing was "
        "written: push fewer changes at a time (split FILE and push each part with --no-prune)"
    ]
    assert len(result.stdout.splitlines()) == 129
    assert read(etcd, prefix).items == {}


def test_push_fails_cleanly_when_etcd_is_down(
    etcd: EtcdServer, router_toml: Path, tmp_path: Path
) -> None:
    """etcd stopped: one error line naming the endpoint, exit 1, no traceback."""
    etcd.stop()
    result = push(policy(tmp_path), router_toml)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("routerctl: error: cannot read the config under ")
    assert f"127.0.0.1:{etcd.port}" in line


@pytest.mark.parametrize("case", ["no --config", "no [config_service]", "unreadable"])
def test_push_usage_errors_exit_2(case: str, tmp_path: Path) -> None:
    """No router config, one without [config_service], or one that cannot be read: one line,
    exit 2."""
    router = tmp_path / "router.toml"
    router.write_text('[server]\nlisten = "127.0.0.1:8080"\n')
    args = ["config", "push", str(policy(tmp_path))]
    if case == "no [config_service]":
        args += ["--config", str(router)]
    elif case == "unreadable":
        args += ["--config", str(tmp_path / "missing.toml")]
    result = run_cli(*args, env={"ROUTERCTL_CONFIG": ""})
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("routerctl: error: ")
    assert result.stdout == ""


# -- config show ---------------------------------------------------------------------------
def test_show_merges_etcd_and_says_where_each_part_came_from(
    etcd: EtcdServer, router_toml: Path, prefix: str, tmp_path: Path
) -> None:
    """With [config_service], show prints the file's sections with etcd's documents merged
    in, `sources` naming the file, defaults and each document with its revision, and key
    hashes shortened."""
    revision = pushed_revision(push(policy(tmp_path, weight=4.0), router_toml).stdout)
    result = run_cli("config", "show", str(router_toml))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    shown = json.loads(result.stdout)
    assert shown["backends"][0]["weight"] == 4.0
    assert shown["keys"][0]["sha256"] == f"{SHA_K1[:8]}…"
    assert SHA_K1 not in result.stdout
    at = f"@rev {revision}"
    assert shown["sources"] == {
        "server": "file",
        "state": "default",
        "admin": "default",
        "telemetry": "default",
        "routing": "default",
        "health": "default",
        "config_service": "file",
        "limits": "default",
        "budget": "default",
        "usage": "default",
        "backends/vllm-a": f"etcd:{prefix}backends/vllm-a{at}",
        "backends/vllm-b": f"etcd:{prefix}backends/vllm-b{at}",
        "keys/k1": f"etcd:{prefix}keys/k1{at}",
        "models/chat": f"etcd:{prefix}models/chat{at}",
        "orgs/acme": f"etcd:{prefix}orgs/acme{at}",
    }
    file_only = json.loads(run_cli("config", "show", str(router_toml), "--no-etcd").stdout)
    assert file_only["backends"] == []
    assert "backends/vllm-a" not in file_only["sources"]


def test_show_names_a_document_routers_refuse(
    etcd: EtcdServer, router_toml: Path, prefix: str, tmp_path: Path
) -> None:
    """A document in etcd that does not parse is left out, named on stderr, and show exits 1."""
    assert push(policy(tmp_path), router_toml).returncode == 0
    put(etcd, f"{prefix}orgs/broken", b'{"id": "broken", "rpm": -1}')
    result = run_cli("config", "show", str(router_toml))
    assert result.returncode == 1
    assert [o["id"] for o in json.loads(result.stdout)["orgs"]] == ["acme"]
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"routerctl: warning: routers refuse this (they keep their last good "
                           f"version): {prefix}orgs/broken: rpm: ")  # fmt: skip


def test_show_with_etcd_down_prints_the_file_and_warns(etcd: EtcdServer, router_toml: Path) -> None:
    """etcd unreachable: the file part is printed, one warning line, exit 1."""
    etcd.stop()
    result = run_cli("config", "show", str(router_toml))
    assert result.returncode == 1
    shown = json.loads(result.stdout)
    assert shown["config_service"]["etcd_endpoints"] == [etcd.url]
    assert shown["sources"]["server"] == "file"
    (line,) = result.stderr.splitlines()
    assert line.startswith("routerctl: warning: cannot read etcd (")
    assert line.endswith("printed the file only; routers serve their last-known-good config "
                         "meanwhile")  # fmt: skip


def test_show_without_config_service_shortens_hashes(tmp_path: Path) -> None:
    """A file without [config_service]: every part comes from the file or a default; key and
    admin token hashes are shortened; env variables appear by name only."""
    path = policy(tmp_path)
    path.write_text(
        path.read_text()
        + f'\n[[admin.tokens]]\nid = "ops"\nsha256 = "{SHA_K2}"\nrole = "operator"\n'
    )
    result = run_cli("config", "show", str(path))
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["admin"]["tokens"][0]["sha256"] == f"{SHA_K2[:8]}…"
    assert shown["keys"][0]["sha256"] == f"{SHA_K1[:8]}…"
    assert shown["sources"]["admin"] == "file"
    assert shown["sources"]["server"] == "default"
    assert shown["sources"]["models/chat"] == "file"
