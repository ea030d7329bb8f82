"""The operator docs against the alert rules, the CLI and the test suite.

1. Every `runbook_url: docs/runbooks.md#anchor` in packaging/prometheus/alerts.yml names a
   heading of the runbooks (GitHub anchor rules), and the section behind it names the alert.
2. Every command in a ```sh block of docs/runbooks.md, quickstart.md, install-vm.md and
   install-kubernetes.md is exercised by a test (tests/unit/doc_commands.py says how): each
   `routerctl ...` and `curl ...` by a file under tests/, and in the quickstart and the
   install guides every other command too, or it is allow-listed with the reason.
"""

from __future__ import annotations

import re

import pytest

from tests.unit.doc_commands import (
    ALLOWED,
    COVERED,
    DOCS,
    ROOT,
    Doc,
    argv_pattern,
    doc_commands,
    exercises_cli,
    exercises_http,
    github_anchor,
    method_pattern,
    parse_curl,
    path_pattern,
    resolve,
    rule_for,
    sections,
    shell_commands,
)

RUNBOOKS = ROOT / "docs" / "runbooks.md"
ALERTS = ROOT / "packaging" / "prometheus" / "alerts.yml"
BY_NAME = {doc.name: doc for doc in DOCS}


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


def test_extraction_looks_through_wrappers() -> None:
    """`sh -c '...'` yields its commands; `kubectl exec ... -- env V=x CMD` yields kubectl and
    CMD; a bare assignment is no command; an indented fence (in a list item) counts."""
    text = (
        "1. Step:\n\n"
        "   ```bash\n"
        "   sudo sh -c 'set -a; . /etc/x.env; routerctl config validate /etc/x.toml'\n"
        "   KEY=rk-...   # the key printed above\n"
        "   kubectl exec deploy/r -- env ROUTERCTL_TOKEN=t dist/routerctl backend list\n"
        "   ```\n"
    )
    assert shell_commands(text) == [
        (4, ["set", "-a"]),
        (4, [".", "/etc/x.env"]),
        (4, ["routerctl", "config", "validate", "/etc/x.toml"]),
        (6, ["kubectl", "exec", "deploy/r"]),
        (6, ["dist/routerctl", "backend", "list"]),
    ]
    found = doc_commands(Doc("x.md", every_command=True), text)
    assert [str(c) for c in found.cli] == ["routerctl config validate", "routerctl backend list"]
    assert [c.where for c in found.cli] == ["x.md:4", "x.md:6"]


def test_curl_method_and_path() -> None:
    """-X wins; data without -X is POST; the URL's path, without host or query."""
    assert str(parse_curl("d:1", ["-s", "http://h:8080/v1/status/readyz"])) == "GET /v1/status/readyz"  # fmt: skip  # noqa: E501
    assert str(parse_curl("d:1", ["-s", "-X", "POST", "-H", "A: b", "http://h/v1/admin/config/reload"])) == "POST /v1/admin/config/reload"  # fmt: skip  # noqa: E501
    assert str(parse_curl("d:1", ["http://h/v1/chat/completions", "-d", "{}"])) == "POST /v1/chat/completions"  # fmt: skip  # noqa: E501
    assert str(parse_curl("d:1", ["http://h/v1/admin/audit?org=a"])) == "GET /v1/admin/audit"


def test_resolution_rejects_unknown_commands_and_options() -> None:
    """A typo in a documented command fails here rather than at 3 a.m."""
    assert resolve("d:1", ["buffer", "replay", "--via-admin"]).path == ("buffer", "replay")
    with pytest.raises(AssertionError, match=r"d:1: .* no command"):
        resolve("d:1", ["backend", "degrde", "x"])
    with pytest.raises(AssertionError, match="has no option --ttl"):
        resolve("d:1", ["backend", "restore", "x", "--reason", "r", "--ttl", "1h"])


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


# What each document is built around: a broken extraction must not make the coverage tests
# below pass on nothing. (routerctl paths, HTTP calls, leading words of other commands)
BUILT_AROUND: dict[str, tuple[set[tuple[str, ...]], set[str], set[tuple[str, ...]]]] = {
    "runbooks.md": (
        {("backend", "degrade"), ("config", "push"), ("buffer", "replay"), ("doctor",)},
        {"GET /v1/status/readyz", "POST /v1/admin/config/reload"},
        set(),
    ),
    "quickstart.md": (
        {("serve",), ("mock-backend",), ("keys", "create"), ("config", "validate"), ("doctor",)},
        {"GET /v1/status/readyz", "POST /v1/chat/completions"},
        {("nox", "-s", "binary"), ("systemctl",), ("helm", "install"), ("kubectl",),
         ("pip", "install")},
    ),
    "install-vm.md": (
        {("version",), ("config", "validate"), ("doctor",)},
        set(),
        {("nox", "-s", "binary"), ("install",), ("systemctl",), ("systemd-analyze", "verify")},
    ),
    "install-kubernetes.md": (
        {("backend", "list"), ("buffer", "inspect")},
        set(),
        {("docker",), ("kubectl",), ("helm", "lint"), ("helm", "template"), ("helm", "install"),
         ("helm", "upgrade")},
    ),
}  # fmt: skip
STRICT = [doc for doc in DOCS if doc.every_command]


def test_every_document_is_checked() -> None:
    """The docs with ```sh blocks an operator follows are all in DOCS."""
    assert sorted(BY_NAME) == sorted(BUILT_AROUND)
    assert all(doc.path.is_file() for doc in DOCS)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_the_extraction_finds_the_commands_each_doc_is_built_around(doc: Doc) -> None:
    found = doc_commands(doc)
    paths, calls, others = BUILT_AROUND[doc.name]
    assert paths - {c.path for c in found.cli} == set()
    assert calls - {str(h) for h in found.http} == set()
    assert others - {rule_for(c.argv) for c in found.other} == set()
    if doc.name == "runbooks.md":
        assert len(found.cli) >= 20
        assert len(found.http) >= 8


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_every_routerctl_command_is_exercised_by_a_test(doc: Doc) -> None:
    """Each `routerctl ...` of a ```sh block: some test file runs its subcommand path with
    each of its --options."""
    cli = doc_commands(doc).cli
    missing = [f"{c.where}: {c}" for c in cli if not exercises_cli(c)]
    assert missing == [], "documented commands no test runs:\n" + "\n".join(missing)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_every_curl_command_is_exercised_by_a_test(doc: Doc) -> None:
    """Each `curl ...` of a ```sh block: some test file calls its method and path."""
    http = doc_commands(doc).http
    missing = [f"{h.where}: {h}" for h in http if not exercises_http(h)]
    assert missing == [], "documented HTTP calls no test makes:\n" + "\n".join(missing)


def unexplained(doc: Doc, text: str | None = None) -> list[str]:
    """Commands other than routerctl and curl that no test runs and no reason excuses."""
    return [f"{c.where}: {c}" for c in doc_commands(doc, text).other if rule_for(c.argv) is None]


@pytest.mark.parametrize("doc", STRICT, ids=lambda d: d.name)
def test_every_other_command_is_run_by_a_test_or_allowed(doc: Doc) -> None:
    """In the quickstart and the install guides every command counts: one no test runs must
    be in ALLOWED with its reason."""
    assert unexplained(doc) == []


def test_an_unlisted_command_is_reported() -> None:
    """The check above has teeth: an unknown tool is reported, a listed one is not."""
    text = "```sh\nhelm install r chart\nsudo rm -rf /var/lib/routerctl\nhelm push x\n```\n"
    assert unexplained(Doc("x.md", every_command=True), text) == [
        "x.md:3: rm -rf /var/lib/routerctl",
        "x.md:4: helm push x",
    ]


def test_covered_commands_are_run_by_the_tests_named() -> None:
    """Each COVERED command's test file exists and runs it."""
    for words, covered in COVERED.items():
        source = (ROOT / covered.test).read_text(encoding="utf-8")
        assert re.search(covered.evidence, source), f"{covered.test} does not run {words}"


def test_every_allow_list_entry_is_used_and_explained() -> None:
    """No stale entries: each ALLOWED and COVERED key matches a command of a strict doc, and
    each reason is one line."""
    used = {rule_for(c.argv) for doc in STRICT for c in doc_commands(doc).other}
    assert set(ALLOWED) | set(COVERED) == used
    assert all(reason and "\n" not in reason for reason in ALLOWED.values())
