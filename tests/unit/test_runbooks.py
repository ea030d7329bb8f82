"""docs/runbooks.md against the alert rules, the CLI and the test suite.

1. Every `runbook_url: docs/runbooks.md#anchor` in packaging/prometheus/alerts.yml names a
   heading of the runbooks (GitHub anchor rules), and the section behind it names the alert.
2. Every `routerctl ...` and `curl ...` in a ```sh block of the runbooks is exercised by a test:
   - routerctl: the subcommand path is resolved on the real CLI (click's command tree), every
     --option must exist on that command, and one file under tests/ must hold the path as an
     argument list (`"backend", "degrade"`), or with each word of it as a string, or (for
     `serve` and `mock-backend`) a call of the tests/e2e/cli.py helper that runs them,
     together with every --option as a string.
   - curl: the HTTP method and path; one file under tests/ must hold the path (ids in
     /backends/, /overrides/, /usage/ may differ) with the method next to it (`"POST"`,
     `.post(`, `post(`...).
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = ROOT / "docs" / "runbooks.md"
ALERTS = ROOT / "packaging" / "prometheus" / "alerts.yml"
TESTS = ROOT / "tests"
THIS = Path(__file__).resolve()

FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
# Helpers of tests/e2e/cli.py that run a routerctl command as a subprocess.
HELPERS: dict[tuple[str, ...], str] = {
    ("serve",): "router_process(",
    ("mock-backend",): "mock_backend_process(",
}
# Path segments after these are ids (a test may use other ids than the runbook).
ID_PARENTS = {"backends", "overrides", "usage"}
# Shell operators that separate commands on one line.
SEPARATORS = {"|", "||", "&&", ";", "&"}
# curl options that take a value (so the value is not mistaken for the URL).
CURL_VALUED = {
    "-X", "--request", "-H", "--header", "-d", "--data", "--data-raw", "--data-binary",
    "--data-urlencode", "--json", "-o", "--output", "-w", "--write-out", "-u", "--user",
    "-m", "--max-time", "--connect-timeout", "--retry", "--retry-delay", "-A", "--user-agent",
}  # fmt: skip
CURL_DATA = {"-d", "--data", "--data-raw", "--data-binary", "--data-urlencode", "--json"}


# -- the runbooks as a document ------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    lang: str
    first_line: int  # 1-based line of the block's first content line
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Section:
    level: int
    title: str
    anchor: str
    body: str  # from the heading to the next heading of the same or a higher level


def github_anchor(title: str) -> str:
    """GitHub's heading id: lower case, punctuation (but - and _) dropped, spaces to -."""
    text = re.sub(r"<[^>]+>", "", title)  # inline HTML
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # [links](…) keep their text
    out = []
    for char in text.strip().lower():
        if char == " ":
            out.append("-")
        elif char in "-_" or unicodedata.category(char)[0] in "LNM":
            out.append(char)
    return "".join(out)


def blocks_and_headings(text: str) -> tuple[list[Block], list[tuple[int, int, str]]]:
    """Fenced blocks, and headings outside them as (line index, level, title)."""
    blocks: list[Block] = []
    headings: list[tuple[int, int, str]] = []
    lines = text.splitlines()
    fence: tuple[str, str, int] | None = None  # (marker, lang, start)
    in_comment = False
    for index, line in enumerate(lines):
        if fence is None and in_comment:
            in_comment = "-->" not in line
            continue
        opened = FENCE.match(line)
        if fence is not None:
            marker, lang, start = fence
            if opened and line.strip().startswith(marker) and not opened.group(2):
                blocks.append(Block(lang, start + 1, tuple(lines[start:index])))
                fence = None
            continue
        if opened:
            fence = (opened.group(1), opened.group(2), index + 1)
        elif line.lstrip().startswith("<!--"):
            in_comment = "-->" not in line
        elif found := HEADING.match(line):
            headings.append((index, len(found.group(1)), found.group(2)))
    assert fence is None, f"{RUNBOOKS}: unclosed ``` fence opened at line {fence[2]}"
    return blocks, headings


def sections(text: str) -> dict[str, Section]:
    """Sections by anchor (GitHub numbers repeated anchors -1, -2, ...)."""
    _, headings = blocks_and_headings(text)
    lines = text.splitlines()
    found: dict[str, Section] = {}
    for i, (index, level, title) in enumerate(headings):
        end = next((h[0] for h in headings[i + 1 :] if h[1] <= level), len(lines))
        anchor = base = github_anchor(title)
        n = 0
        while anchor in found:
            n += 1
            anchor = f"{base}-{n}"
        found[anchor] = Section(level, title, anchor, "\n".join(lines[index:end]))
    return found


def shell_commands(text: str) -> list[tuple[int, list[str]]]:
    """(line, argv) of every command in ```sh blocks: continuations joined, comments,
    leading VAR=value and sudo dropped, split at | && ; &."""
    commands = []
    blocks, _ = blocks_and_headings(text)
    for block in blocks:
        if block.lang not in ("sh", "bash", "shell"):
            continue
        pending, start = "", 0
        for offset, raw in enumerate(block.lines):
            if not pending:
                start = block.first_line + offset
            pending += raw.rstrip()
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            lexer = shlex.shlex(pending, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            tokens = list(lexer)
            pending = ""
            argv: list[str] = []
            for token in [*tokens, ";"]:
                if token not in SEPARATORS:
                    argv.append(token)
                    continue
                while argv and (argv[0] == "sudo" or re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0])):
                    argv.pop(0)
                if argv:
                    commands.append((start, argv))
                argv = []
    return commands


# -- commands --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CliCommand:
    line: int
    path: tuple[str, ...]
    options: tuple[str, ...]

    def __str__(self) -> str:
        return " ".join(["routerctl", *self.path, *self.options])


@dataclass(frozen=True)
class HttpCommand:
    line: int
    method: str
    path: str

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


@cache
def cli_root() -> Any:
    from routerctl.cli import app  # noqa: PLC0415 - builds the CLI: only when asked

    return typer.main.get_command(app)


def resolve(line: int, args: list[str]) -> CliCommand:
    """The subcommand path of `routerctl ARGS` on the real CLI and its --options, each
    checked to exist there."""
    command, path = cli_root(), list[str]()
    rest = list(args)
    while rest and hasattr(command, "commands") and not rest[0].startswith("-"):
        name = rest.pop(0)
        assert name in list(command.commands), (
            f"runbooks.md:{line}: `routerctl {' '.join(args)}`: no command "
            f"`{' '.join(['routerctl', *path, name])}`"
        )
        command = command.commands[name]
        path.append(name)
    assert not hasattr(command, "commands"), f"runbooks.md:{line}: `{path}` is a group"
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    options = []
    for arg in rest:
        if arg.startswith("--"):
            option = arg.split("=", 1)[0]
            assert option in known, (
                f"runbooks.md:{line}: `routerctl {' '.join(args)}`: "
                f"`routerctl {' '.join(path)}` has no option {option}"
            )
            options.append(option)
    return CliCommand(line, tuple(path), tuple(dict.fromkeys(options)))


def parse_curl(line: int, args: list[str]) -> HttpCommand:
    method, url, data = None, None, False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in CURL_VALUED:
            if arg in ("-X", "--request"):
                method = args[i + 1].upper()
            data = data or arg in CURL_DATA
            i += 2
            continue
        if arg.startswith("-"):
            assert arg != "-G", f"runbooks.md:{line}: curl -G is not understood here"
        elif url is None:
            url = arg
        i += 1
    assert url is not None, f"runbooks.md:{line}: curl without a URL: {args}"
    assert "://" in url, f"runbooks.md:{line}: curl URL without a scheme: {url}"
    return HttpCommand(line, method or ("POST" if data else "GET"), urlsplit(url).path)


def runbook_commands() -> tuple[list[CliCommand], list[HttpCommand]]:
    cli: list[CliCommand] = []
    http: list[HttpCommand] = []
    for line, argv in shell_commands(RUNBOOKS.read_text(encoding="utf-8")):
        if argv[0] == "routerctl":
            cli.append(resolve(line, argv[1:]))
        elif argv[0] == "curl":
            http.append(parse_curl(line, argv[1:]))
    return cli, http


# -- the test suite as text ------------------------------------------------------------------
@cache
def suite_sources() -> dict[str, str]:
    return {
        str(path.relative_to(ROOT)): path.read_text(encoding="utf-8")
        for path in sorted(TESTS.rglob("*.py"))
        if path.resolve() != THIS
    }


def _quoted(word: str) -> str:
    return rf"""(["']){re.escape(word)}\{{n}}"""


def argv_pattern(path: tuple[str, ...]) -> re.Pattern[str]:
    """`"backend", "degrade"` (any quotes); one word: followed by `,` `)` or `]`."""
    parts = [_quoted(word).replace("{n}", str(i + 1)) for i, word in enumerate(path)]
    tail = r"\s*[,)\]]" if len(path) == 1 else ""
    return re.compile(r"\s*,\s*".join(parts) + tail)


def runs_path(source: str, path: tuple[str, ...]) -> bool:
    """The argument list (`"backend", "degrade"`), or each word quoted somewhere in the file
    (tests build argv in steps: `BUFFER = [*routerctl_command(), "buffer"]`, then
    `[*BUFFER, "replay", ...]`), or a helper that runs the command."""
    if argv_pattern(path).search(source):
        return True
    if len(path) > 1 and all(re.search(_quoted(w).replace("{n}", "1"), source) for w in path):
        return True
    helper = HELPERS.get(path)
    return helper is not None and helper in source


def exercises_cli(command: CliCommand) -> list[str]:
    """Test files that run the command's path with each of its options."""
    found = []
    for name, source in suite_sources().items():
        if not runs_path(source, command.path):
            continue
        if all(re.search(rf"""(["']){re.escape(o)}\1""", source) for o in command.options):
            found.append(name)
    return found


def path_pattern(path: str) -> re.Pattern[str]:
    segments = path.strip("/").split("/")
    out = []
    for i, segment in enumerate(segments):
        is_id = i > 0 and segments[i - 1] in ID_PARENTS
        out.append(r"[^/\s\"'?]+" if is_id else re.escape(segment))
    return re.compile("/" + "/".join(out) + r"(?![\w/-])")


def method_pattern(method: str) -> re.Pattern[str]:
    lower = method.lower()
    return re.compile(rf"""(["']){method}\1|\b{lower}\(|method\s*=\s*["']{method}["']""")


def exercises_http(command: HttpCommand, window: int = 200) -> list[str]:
    """Test files with the path and the method within `window` characters of it."""
    found = []
    pattern, method = path_pattern(command.path), method_pattern(command.method)
    for name, source in suite_sources().items():
        for match in pattern.finditer(source):
            near = source[max(0, match.start() - window) : match.end() + window]
            if method.search(near):
                found.append(name)
                break
    return found


# -- 1. alerts -> anchors --------------------------------------------------------------------
def alert_runbooks() -> dict[str, str]:
    """Alert name -> runbook anchor. Each `- alert: NAME` starts a rule; its runbook_url is
    the one before the next rule."""
    text = ALERTS.read_text(encoding="utf-8")
    rules = re.split(r"^\s*- alert:\s*", text, flags=re.MULTILINE)[1:]
    assert rules, f"{ALERTS}: no alert rules found"
    out = {}
    for rule in rules:
        name = rule.split(None, 1)[0]
        urls = re.findall(r"^\s*runbook_url:\s*(\S+)\s*$", rule, flags=re.MULTILINE)
        assert len(urls) == 1, f"{ALERTS}: alert {name} has {len(urls)} runbook_url lines"
        doc, _, anchor = urls[0].strip("'\"").partition("#")
        assert doc == "docs/runbooks.md", f"{name}: runbook_url {urls[0]} is not in runbooks.md"
        assert anchor, f"{name}: runbook_url {urls[0]} names no section"
        assert name not in out, f"{ALERTS}: alert {name} defined twice"
        out[name] = anchor
    return out


def test_every_alert_links_to_a_runbook_section_that_names_it() -> None:
    """Each alert's runbook_url anchor is a heading of runbooks.md, and the section under it
    (subsections included) mentions the alert by name."""
    alerts = alert_runbooks()
    assert len(alerts) >= 10
    found = sections(RUNBOOKS.read_text(encoding="utf-8"))
    missing = {name: anchor for name, anchor in alerts.items() if anchor not in found}
    assert missing == {}, f"anchors not in runbooks.md: {missing}; headings: {sorted(found)}"
    unnamed = {
        name: anchor
        for name, anchor in alerts.items()
        if not re.search(rf"\b{re.escape(name)}\b", found[anchor].body)
    }
    assert unnamed == {}, f"alerts not named in the section their runbook_url points to: {unnamed}"


REQUIRED_SECTIONS = [
    "startup-and-shutdown",
    "reading-health-output",
    "backend-degradation",
    "routing-policy-update",
    "failover-recovery",
    "buffer-store-recovery",
    "kafka-connectivity-issues",
    "config-service-connectivity",
    "redis-connectivity",
    "rate-limit-troubleshooting",
    "budget-troubleshooting",
    "high-error-rate",
    "high-latency",
]


def test_the_runbooks_have_every_required_section() -> None:
    """The sections issue 7 asks for exist as level-2 headings with these anchors."""
    found = sections(RUNBOOKS.read_text(encoding="utf-8"))
    assert [a for a in REQUIRED_SECTIONS if a not in found or found[a].level != 2] == []


def test_internal_links_point_at_headings() -> None:
    """Every `](#anchor)` link in runbooks.md names one of its headings."""
    text = RUNBOOKS.read_text(encoding="utf-8")
    found = sections(text)
    links = set(re.findall(r"\]\(#([^)\s]+)\)", text))
    assert links, "no internal links found: the link pattern is broken"
    assert sorted(links - found.keys()) == []


@pytest.mark.parametrize(
    ("title", "anchor"),
    [
        ("Backend degradation", "backend-degradation"),
        ("Rate-limit troubleshooting", "rate-limit-troubleshooting"),
        ("Clients get 401, 403 or 404", "clients-get-401-403-or-404"),
        ("`healthz`: is the process alive?", "healthz-is-the-process-alive"),
        ("`routerctl doctor`", "routerctl-doctor"),
        ("Clients get 502 `upstream_connect_error`", "clients-get-502-upstream_connect_error"),
        ("Kafka connectivity issues", "kafka-connectivity-issues"),
    ],
)
def test_github_anchor_rules(title: str, anchor: str) -> None:
    """Lower case; spaces become -; punctuation other than - and _ is dropped."""
    assert github_anchor(title) == anchor


def test_repeated_headings_are_numbered_and_fences_hide_headings() -> None:
    """A second `## X` is #x-1; a `# comment` inside a fence is not a heading."""
    text = "# A\n\n## X\n\n```sh\n# not a heading\n```\n\n## X\ntext\n"
    assert list(sections(text)) == ["a", "x", "x-1"]
    assert sections(text)["a"].body.endswith("text")  # level 1 spans its subsections


# -- 2. commands -> tests --------------------------------------------------------------------
def test_shell_extraction_follows_the_convention() -> None:
    """Continuations join, comments and pipes split, VAR=value and sudo are dropped, and
    only ```sh blocks count."""
    text = (
        "```sh\n"
        "routerctl backend degrade vllm-b --weight 0.25 \\\n"
        '  --reason "p99 10s, INC-142"   # a comment\n'
        "curl -s http://h:9090/metrics | grep '^router_' && sudo X=1 routerctl version\n"
        "```\n"
        "```text\nrouterctl not-a-command\n```\n"
    )
    assert shell_commands(text) == [
        (2, ["routerctl", "backend", "degrade", "vllm-b", "--weight", "0.25", "--reason",
             "p99 10s, INC-142"]),
        (4, ["curl", "-s", "http://h:9090/metrics"]),
        (4, ["grep", "^router_"]),
        (4, ["routerctl", "version"]),
    ]  # fmt: skip


def test_curl_method_and_path() -> None:
    """-X wins; data without -X is POST; the URL's path, without host or query."""
    assert str(parse_curl(1, ["-s", "http://h:8080/v1/status/readyz"])) == "GET /v1/status/readyz"
    assert str(parse_curl(1, ["-s", "-X", "POST", "-H", "A: b", "http://h/v1/admin/config/reload"])) == "POST /v1/admin/config/reload"  # fmt: skip  # noqa: E501
    assert str(parse_curl(1, ["http://h/v1/chat/completions", "-d", "{}"])) == "POST /v1/chat/completions"  # fmt: skip  # noqa: E501
    assert str(parse_curl(1, ["http://h/v1/admin/audit?org=a"])) == "GET /v1/admin/audit"


def test_resolution_rejects_unknown_commands_and_options() -> None:
    """A typo in a runbook command fails here rather than at 3 a.m."""
    assert resolve(1, ["buffer", "replay", "--via-admin"]).path == ("buffer", "replay")
    with pytest.raises(AssertionError, match="no command"):
        resolve(1, ["backend", "degrde", "x"])
    with pytest.raises(AssertionError, match="has no option --ttl"):
        resolve(1, ["backend", "restore", "x", "--reason", "r", "--ttl", "1h"])


def test_matching_needs_the_argument_list_and_the_method() -> None:
    """The search patterns find argv lists and method+path, and nothing looser."""
    pattern = argv_pattern(("backend", "degrade"))
    assert pattern.search('cli(server, "backend", "degrade", *args)')
    assert pattern.search("run_cli('backend',\n    'degrade')")
    assert not pattern.search('"backend degrade"')
    assert argv_pattern(("doctor",)).search('run_cli("doctor", "--config", str(p))')
    assert not argv_pattern(("doctor",)).search('"doctor.md"')
    path = path_pattern("/v1/admin/backends/vllm-b/degrade")
    assert path.search('"/v1/admin/backends/gpu-a/degrade"')
    assert path.search('f"{url}/v1/admin/backends/{backend}/degrade"')
    assert not path_pattern("/v1/admin/buffer").search('"/v1/admin/buffer/replay"')
    assert method_pattern("POST").search('call(router, "POST", ')
    assert method_pattern("GET").search("session.get(")
    assert not method_pattern("GET").search('"POST"')


def test_the_runbooks_have_commands_to_check() -> None:
    """The extraction finds the commands the runbooks are built around (a broken extraction
    must not make the coverage test below pass on nothing)."""
    cli, http = runbook_commands()
    paths = {c.path for c in cli}
    assert {("backend", "degrade"), ("config", "push"), ("buffer", "replay"), ("doctor",)} <= paths
    assert {"GET /v1/status/readyz", "POST /v1/admin/config/reload"} <= {str(h) for h in http}
    assert len(cli) >= 20
    assert len(http) >= 8


def test_every_routerctl_command_in_the_runbooks_is_exercised_by_a_test() -> None:
    """Each `routerctl ...` of a ```sh block: some test file runs its subcommand path with
    each of its --options."""
    cli, _ = runbook_commands()
    missing = [f"runbooks.md:{c.line}: {c}" for c in cli if not exercises_cli(c)]
    assert missing == [], "runbook commands no test runs:\n" + "\n".join(missing)


def test_every_curl_command_in_the_runbooks_is_exercised_by_a_test() -> None:
    """Each `curl ...` of a ```sh block: some test file calls its method and path."""
    _, http = runbook_commands()
    missing = [f"runbooks.md:{h.line}: {h}" for h in http if not exercises_http(h)]
    assert missing == [], "runbook HTTP calls no test makes:\n" + "\n".join(missing)
