"""`routerctl config validate / show / push`."""

from __future__ import annotations

import asyncio
import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import typer

from appliance.settings import Settings, to_builtins
from appliance.settings.loader import ConfigError, load_file, parse_settings
from routerctl.commands.output import fail, fail_lines, print_json

if TYPE_CHECKING:
    from appliance.configsvc.documents import Document
    from appliance.configsvc.etcd_client import EtcdClient

# The etcd client pulls in aiohttp: imported when show or push needs etcd, so `config
# validate` stays fast.

app = typer.Typer(
    rich_markup_mode=None, help="Validate, inspect and push configuration.", no_args_is_help=True
)

FileArg = Annotated[Path, typer.Argument(help="The TOML config file.")]
SkipEnvOption = Annotated[
    bool,
    typer.Option("--skip-env", help="Do not require the backends' env variables to be set."),
]
# The four kinds of etcd documents, as Settings fields (documents.KINDS, without importing it).
_DYNAMIC = ("backends", "models", "orgs", "keys")
_ID = {"backends": "id", "models": "name", "orgs": "id", "keys": "id"}


@app.command("validate")
def validate(file: FileArg, skip_env: SkipEnvOption = False) -> None:
    """Check a config file; print one line per problem (file:line: key: reason)."""
    try:
        if skip_env:
            parse_settings(_read(file, code=1), str(file))
        else:
            load_file(file)
    except ConfigError as exc:
        fail_lines(exc.problems)
    typer.echo(f"{file}: ok")


@app.command("show")
def show(
    file: FileArg,
    no_etcd: Annotated[
        bool, typer.Option("--no-etcd", help="Show the file only, even with [config_service].")
    ] = False,
) -> None:
    """Print the effective configuration as JSON, with `sources` saying where each part came
    from: the file, a default, or an etcd document (with [config_service]). Key and token
    hashes are shortened; no secret is in it. Exit 1 when etcd cannot be read (the file part
    is printed) or holds documents routers refuse."""
    text = _read(file, code=1)
    try:
        settings = parse_settings(text, str(file))
    except ConfigError as exc:
        fail_lines(exc.problems)
    sources = _file_sources(text, settings)
    if no_etcd or not settings.config_service.etcd_endpoints:
        print_json(_view(settings, sources))
        return
    client = _client(settings, file, on_error=lambda: print_json(_view(settings, sources)))
    code = asyncio.run(_show_with_etcd(client, settings, sources))
    raise typer.Exit(code)


@app.command("push")
def push(
    file: Annotated[
        Path, typer.Argument(help="TOML with [[backends]], [[models]], [[orgs]], [[keys]].")
    ],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar="ROUTERCTL_CONFIG",
            help="The router's TOML file; its [config_service] says where etcd is.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the diff; write nothing.")
    ] = False,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune/--no-prune",
            help="Delete the documents FILE no longer has (default), or keep them.",
        ),
    ] = True,
    skip_env: SkipEnvOption = False,
) -> None:
    """Validate FILE like a router would, print the diff against etcd, and write it in one
    transaction (all or nothing; refused if etcd changed since it was read)."""
    if config is None:
        fail("pass --config ROUTER_TOML (or set ROUTERCTL_CONFIG): its [config_service] "
             "says where etcd is", code=2)  # fmt: skip
    text = _read(file, code=2)
    router = _router_settings(config)
    from routerctl.commands import config_push  # noqa: PLC0415

    environ = None if skip_env else os.environ
    try:
        pushed = config_push.parse_push_file(text, str(file), environ, standalone=prune)
        wanted = config_push.file_documents(router.config_service.prefix, pushed)
    except ConfigError as exc:
        fail_lines(exc.problems)
    if not wanted:
        fail(f"{file}: no [[backends]], [[models]], [[orgs]] or [[keys]]: nothing to push")
    client = _client(router, config)
    asyncio.run(_push(client, router, wanted, prune=prune, dry_run=dry_run))


async def _push(
    client: EtcdClient, router: Settings, wanted: dict[str, Document], *, prune: bool,
    dry_run: bool,
) -> None:  # fmt: skip
    from appliance.configsvc.etcd_client import EtcdError  # noqa: PLC0415
    from routerctl.commands import config_push as cp  # noqa: PLC0415

    prefix = router.config_service.prefix
    async with client:
        try:
            plan = await cp.read_plan(client, router, prefix, wanted, prune=prune)
        except EtcdError as exc:
            fail(f"cannot read the config under {prefix} from etcd: {exc}")
        for line in cp.diff_lines(plan):
            typer.echo(line)
        if plan.kept:
            typer.echo(f"kept {len(plan.kept)} documents FILE does not have (--no-prune)")
        if plan.problems:
            fail_lines([f"routerctl: error: routers would refuse the config under {prefix} "
                        "after this push; nothing was written:", *plan.problems])  # fmt: skip
        if not plan.changes:
            typer.echo(f"no changes ({prefix} at revision {plan.revision})")
            return
        if plan.ops > cp.MAX_TXN_OPS:
            fail(cp.too_many_ops(plan))
        if dry_run:
            typer.echo(f"dry run: {plan.summary()} not written ({prefix} at revision "
                       f"{plan.revision})")  # fmt: skip
            return
        try:
            revision = await cp.apply_plan(client, plan)
        except cp.PushError as exc:
            fail(str(exc))
        except EtcdError as exc:
            fail(f"etcd did not confirm the push ({exc}); it may or may not have been "
                 "written: check with --dry-run")  # fmt: skip
    typer.echo(f"pushed {plan.summary()} to {prefix} at revision {revision}")


async def _show_with_etcd(client: EtcdClient, settings: Settings, sources: dict[str, str]) -> int:
    from appliance.configsvc.documents import merge, merged_problems  # noqa: PLC0415
    from appliance.configsvc.etcd_client import EtcdError  # noqa: PLC0415
    from routerctl.commands.config_push import read_documents  # noqa: PLC0415

    prefix = settings.config_service.prefix
    try:
        async with client:
            revision, documents, problems = await read_documents(client, prefix)
    except EtcdError as exc:
        print_json(_view(settings, sources))
        _warn(f"cannot read etcd ({exc}): printed the file only; routers serve their "
              "last-known-good config meanwhile")  # fmt: skip
        return 1
    ignored = [f"[[{kind}]]" for kind in _DYNAMIC if getattr(settings, kind)]
    if ignored:
        _warn(f"the file's {', '.join(ignored)} are not used: with [config_service] the "
              "documents in etcd replace them", note=True)  # fmt: skip
    merged = merge(settings, documents)
    problems += [f"{prefix}{p}" for p in merged_problems(merged)]
    sources = {k: v for k, v in sources.items() if k.split("/", 1)[0] not in _DYNAMIC}
    for key, doc in documents.items():
        sources[f"{doc.kind}/{doc.name}"] = f"etcd:{key}@rev {revision}"
    print_json(_view(merged, sources))
    for problem in problems:
        _warn(f"routers refuse this (they keep their last good version): {problem}")
    return 1 if problems else 0


def _view(settings: Settings, sources: dict[str, str]) -> dict[str, Any]:
    """The settings as plain data, hashes shortened, with `sources` last."""
    data: Any = to_builtins(settings)
    for item in [*data["keys"], *data["admin"]["tokens"]]:
        item["sha256"] = f"{item['sha256'][:8]}…"
    return {**data, "sources": sources}


def _file_sources(text: str, settings: Settings) -> dict[str, str]:
    """'file' for each section the file sets, 'default' for the others, and each dynamic
    object the file defines."""
    written = set(tomllib.loads(text))
    sources = {
        name: "file" if name in written else "default"
        for name in (f.name for f in msgspec.structs.fields(Settings))
        if name not in _DYNAMIC
    }
    for kind in _DYNAMIC:
        for item in getattr(settings, kind):
            sources[f"{kind}/{getattr(item, _ID[kind])}"] = "file"
    return sources


def _router_settings(path: Path) -> Settings:
    """The router's file (usage error, exit 2, when it cannot be used to reach etcd)."""
    try:
        settings = parse_settings(_read(path, code=2), str(path))
    except ConfigError as exc:
        fail_lines(exc.problems, code=2)
    if not settings.config_service.etcd_endpoints:
        fail(f"{path}: no [config_service] etcd_endpoints: nothing says where etcd is", code=2)
    return settings


def _client(settings: Settings, source: Path, on_error: Any = None) -> EtcdClient:
    from appliance.configsvc.connect import EtcdSettingsError, etcd_client_from  # noqa: PLC0415

    try:
        client = etcd_client_from(settings, os.environ)
    except EtcdSettingsError as exc:
        if on_error is not None:
            on_error()
        fail(f"{source}: {exc}")
    if client is None:  # callers check etcd_endpoints first
        fail(f"{source}: no [config_service] etcd_endpoints", code=2)
    return client


def _read(path: Path, *, code: int) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"{path}: cannot read: {exc.strerror}", code=code)
    except UnicodeDecodeError:
        fail(f"{path}: cannot read: not UTF-8 text", code=code)


def _warn(message: str, *, note: bool = False) -> None:
    typer.echo(f"routerctl: {'note' if note else 'warning'}: {message}", err=True)
