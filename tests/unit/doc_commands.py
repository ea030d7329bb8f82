"""The commands of the operator docs' ```sh blocks, and the tests that exercise them.

Used by tests/unit/test_runbooks.py for every document in DOCS, and by
tests/e2e/test_quickstart.py to replay the quickstart. The convention (docs/runbooks.md, top):
commands an operator types are in ```sh blocks (bash and shell count too), one per line, a
trailing \\ continues it; what a command prints is in a ```text block after it.

- `routerctl ...` (or any path ending in /routerctl, e.g. dist/routerctl): the subcommand path
  is resolved on the real CLI (click's command tree), every --option must exist on that
  command, and one file under tests/ must hold the path as an argument list
  (`"backend", "degrade"`), or with each word of it as a string, or (for `serve` and
  `mock-backend`) a call of the tests/e2e/cli.py helper that runs them, together with every
  --option as a string.
- `curl ...`: the HTTP method and path; one file under tests/ must hold the path (ids in
  /backends/, /overrides/, /usage/ may differ) with the method next to it (`"POST"`,
  `.post(`, `post(`...).
- anything else, in a document with `every_command`: run by the test file named in COVERED,
  or listed in ALLOWED with the reason no test can run it.

Wrappers are looked through: `sudo`, leading VAR=value, `env`, `sh -c '...'` (its commands
are checked instead) and `kubectl exec ... -- CMD` (CMD is checked as well as kubectl).
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

import typer

ROOT = Path(__file__).resolve().parents[2]
DOCS_DIR = ROOT / "docs"
TESTS = ROOT / "tests"
# This checker and its own tests quote commands as examples: they exercise nothing.
CHECKER = {Path(__file__).resolve(), (TESTS / "unit" / "test_runbooks.py").resolve()}


@dataclass(frozen=True)
class Doc:
    name: str  # file name under docs/
    every_command: bool  # False: only routerctl and curl are checked (text filters around them
    # in the runbooks, grep, jq, sqlite3, are not)

    @property
    def path(self) -> Path:
        return DOCS_DIR / self.name


DOCS = (
    Doc("runbooks.md", every_command=False),
    Doc("quickstart.md", every_command=True),
    Doc("install-vm.md", every_command=True),
    Doc("install-kubernetes.md", every_command=True),
)

# Commands no test can run, by leading words: why not.
ALLOWED: dict[tuple[str, ...], str] = {
    ("pip", "install"): "changes the Python environment the suite itself runs from",
    ("install",): "copies into /usr/local/bin, /etc and /etc/systemd as root; the tests run "
    "dist/routerctl, the unit and the config from their own copies",
    ("tee",): "writes a root-owned file; test_quickstart.py appends the same output to its copy",
    ("systemctl",): "needs systemd as PID 1 and root; test_quickstart.py runs the unit's "
    "ExecStart with its Environment instead",
    ("set", "-a"): "shell builtin in the `sh -c` that validates with the service's environment",
    (".",): "shell builtin there: reads the root-only /etc/routerctl/routerctl.env",
    ("docker",): "needs a Docker daemon and a registry",
    ("kubectl",): "needs a cluster; test_quickstart.py checks the names it uses against the "
    "rendered chart and runs the pod's command",
    ("helm", "install"): "needs a cluster; test_quickstart.py renders the same chart and values "
    "with helm template and runs what the Deployment runs",
    ("helm", "upgrade"): "needs a cluster; the same rendering as helm install",
}


@dataclass(frozen=True)
class Covered:
    test: str  # a file under the repository root that runs the command
    evidence: str  # a regex that must match in that file


# Commands other than routerctl and curl that a named test runs.
COVERED: dict[tuple[str, ...], Covered] = {
    ("nox", "-s", "binary"): Covered(
        "tests/e2e/test_binary.py", r"builder\.build\(\)"
    ),  # the binary fixture builds with packaging/pyinstaller/build.py, as the nox session
    ("helm", "lint"): Covered("tests/packaging/test_helm_chart.py", r'"lint", "--strict"'),
    ("helm", "template"): Covered("tests/packaging/test_helm_chart.py", r'"template"'),
    ("systemd-analyze", "verify"): Covered("tests/packaging/test_systemd_unit.py", r'"verify"'),
}

FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
SHELL_LANGS = ("sh", "bash", "shell")
# Helpers of tests/e2e/cli.py that run a routerctl command as a subprocess.
HELPERS: dict[tuple[str, ...], str] = {
    ("serve",): "router_process(",
    ("mock-backend",): "mock_backend_process(",
}
# Path segments after these are ids (a test may use other ids than the doc).
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


# -- a document ------------------------------------------------------------------------------
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
    assert fence is None, f"unclosed ``` fence opened at line {fence[2]}"
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


def split_commands(line: str) -> list[list[str]]:
    """The commands of one shell line: comments dropped, split at | && ; &, and wrappers
    looked through (sudo, VAR=value, env, sh -c '...', kubectl exec ... -- CMD)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = []
    argv: list[str] = []
    for token in [*lexer, ";"]:
        if token not in SEPARATORS:
            argv.append(token)
            continue
        commands.extend(unwrap(argv))
        argv = []
    return commands


def unwrap(argv: list[str]) -> list[list[str]]:
    argv = list(argv)
    while argv and (argv[0] in ("sudo", "env") or re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0])):
        argv.pop(0)
    if not argv:
        return []
    if argv[0] in ("sh", "bash") and len(argv) == 3 and argv[1] == "-c":
        return split_commands(argv[2])
    if argv[:2] == ["kubectl", "exec"] and "--" in argv:
        cut = argv.index("--")
        return [argv[:cut], *unwrap(argv[cut + 1 :])]
    return [argv]


def block_commands(block: Block) -> list[tuple[int, list[str]]]:
    """(line, argv) of every command of a block; continuation lines are joined."""
    commands: list[tuple[int, list[str]]] = []
    pending, start = "", 0
    for offset, raw in enumerate(block.lines):
        if not pending:
            start = block.first_line + offset
        pending += raw.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        commands.extend((start, argv) for argv in split_commands(pending))
        pending = ""
    return commands


def shell_commands(text: str) -> list[tuple[int, list[str]]]:
    """(line, argv) of every command in the ```sh blocks of a document."""
    blocks, _ = blocks_and_headings(text)
    return [c for b in blocks if b.lang in SHELL_LANGS for c in block_commands(b)]


# -- commands --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CliCommand:
    where: str  # doc:line
    path: tuple[str, ...]
    options: tuple[str, ...]

    def __str__(self) -> str:
        return " ".join(["routerctl", *self.path, *self.options])


@dataclass(frozen=True)
class HttpCommand:
    where: str
    method: str
    path: str

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class OtherCommand:
    where: str
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class DocCommands:
    cli: list[CliCommand]
    http: list[HttpCommand]
    other: list[OtherCommand]


def is_routerctl(program: str) -> bool:
    """`routerctl`, `dist/routerctl`, `/usr/local/bin/routerctl`."""
    return program == "routerctl" or program.endswith("/routerctl")


@cache
def cli_root() -> Any:
    from routerctl.cli import app  # noqa: PLC0415 - builds the CLI: only when asked

    return typer.main.get_command(app)


def resolve(where: str, args: list[str]) -> CliCommand:
    """The subcommand path of `routerctl ARGS` on the real CLI and its --options, each
    checked to exist there."""
    command, path = cli_root(), list[str]()
    rest = list(args)
    while rest and hasattr(command, "commands") and not rest[0].startswith("-"):
        name = rest.pop(0)
        assert name in list(command.commands), (
            f"{where}: `routerctl {' '.join(args)}`: no command "
            f"`{' '.join(['routerctl', *path, name])}`"
        )
        command = command.commands[name]
        path.append(name)
    assert not hasattr(command, "commands"), f"{where}: `{path}` is a group"
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    options = []
    for arg in rest:
        if arg.startswith("--"):
            option = arg.split("=", 1)[0]
            assert option in known, (
                f"{where}: `routerctl {' '.join(args)}`: "
                f"`routerctl {' '.join(path)}` has no option {option}"
            )
            options.append(option)
    return CliCommand(where, tuple(path), tuple(dict.fromkeys(options)))


def parse_curl(where: str, args: list[str]) -> HttpCommand:
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
            assert arg != "-G", f"{where}: curl -G is not understood here"
        elif url is None:
            url = arg
        i += 1
    assert url is not None, f"{where}: curl without a URL: {args}"
    assert "://" in url, f"{where}: curl URL without a scheme: {url}"
    return HttpCommand(where, method or ("POST" if data else "GET"), urlsplit(url).path)


def doc_commands(doc: Doc, text: str | None = None) -> DocCommands:
    """The document's commands, routerctl ones resolved on the CLI, curl ones parsed."""
    found = DocCommands([], [], [])
    body = doc.path.read_text(encoding="utf-8") if text is None else text
    for line, argv in shell_commands(body):
        where = f"{doc.name}:{line}"
        if is_routerctl(argv[0]):
            found.cli.append(resolve(where, argv[1:]))
        elif argv[0] == "curl":
            found.http.append(parse_curl(where, argv[1:]))
        else:
            found.other.append(OtherCommand(where, tuple(argv)))
    return found


def rule_for(argv: tuple[str, ...]) -> tuple[str, ...] | None:
    """The longest ALLOWED or COVERED key that the command starts with."""
    keys = [k for k in (*ALLOWED, *COVERED) if argv[: len(k)] == k]
    return max(keys, key=len) if keys else None


# -- the test suite as text ------------------------------------------------------------------
@cache
def suite_sources() -> dict[str, str]:
    return {
        str(path.relative_to(ROOT)): path.read_text(encoding="utf-8")
        for path in sorted(TESTS.rglob("*.py"))
        if path.resolve() not in CHECKER
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
