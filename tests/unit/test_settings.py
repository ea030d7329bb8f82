"""Settings: defaults, schema walk and line-precise problems."""

from __future__ import annotations

import pytest

from appliance.settings import Settings, parse_listen
from appliance.settings.loader import ConfigError, load_text, parse_settings

GOOD = """
[server]
listen = "127.0.0.1:8080"

[[backends]]
id = "a"
url = "http://127.0.0.1:9001/v1"
api_key_env = "A_KEY"

[[models]]
name = "demo"
backends = [{ backend = "a", upstream_model = "llama" }]

[[orgs]]
id = "acme"

[[keys]]
id = "k1"
org = "acme"
sha256 = "%s"
""" % ("a" * 64)


def problems_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(text, "r.toml", environ or {})
    return caught.value.problems


def test_empty_file_is_all_defaults() -> None:
    """An empty document is valid and equals the defaults."""
    assert parse_settings("") == Settings()


def test_good_file_loads_with_credentials_from_env() -> None:
    """Backend keys come from the named env var and become a bearer header."""
    loaded = load_text(GOOD, "r.toml", {"A_KEY": "sekret"})
    assert loaded.settings.models[0].backends[0].upstream_model == "llama"
    assert loaded.credentials["a"].headers == {"authorization": "Bearer sekret"}
    assert "sekret" not in repr(loaded.credentials["a"])


def test_missing_env_var_names_the_variable_and_line() -> None:
    """A credential variable that is not set is a start-up error naming it."""
    assert problems_of(GOOD) == [
        "r.toml:8: backends[0].api_key_env: environment variable A_KEY is not set"
    ]


def test_every_problem_is_reported_with_its_line() -> None:
    """Several mistakes give one line each, with file, line, key path and a readable reason;
    a typo gets the closest known key."""
    text = GOOD.replace('listen = "127.0.0.1:8080"', 'lisen = "x"\nworkers = 0')
    text = text.replace('upstream_model = "llama"', 'weight = "heavy"')
    found = problems_of(text, {"A_KEY": "x"})
    assert found == [
        "r.toml:3: server.lisen: unknown key; did you mean 'listen'?",
        "r.toml:4: server.workers: must be a whole number >= 1",
        "r.toml:13: models[0].backends[0].weight: expected a number, got a string",
    ]


def test_type_errors_and_cross_references_come_in_one_pass_sorted_by_line() -> None:
    """A wrong type no longer hides a model naming an unknown backend or an unset variable:
    all are reported in one run, in the order of their lines, so one round fixes them all."""
    text = GOOD.replace('backend = "a"', 'backend = "nope"')
    text = text.replace('api_key_env = "A_KEY"', 'api_key_env = "A_KEY"\nweight = "x"')
    text += '\n[telemetry]\nlog_format = "yaml"\nlevel = "info"\n'
    found = problems_of(text, {})  # A_KEY unset too: the environment joins the same pass
    assert [line.split(":")[1] for line in found] == sorted(
        (line.split(":")[1] for line in found), key=int
    )
    assert "r.toml:9: backends[0].weight: expected a number, got a string" in found
    assert any("models[0].backends[0].backend" in line and "nope" in line for line in found)
    assert any(
        "telemetry.log_format: 'yaml' is not allowed; one of 'json', 'console'" in line
        for line in found
    )
    assert any("telemetry.level: unknown key; did you mean 'log_level'?" in line for line in found)
    assert "r.toml:8: backends[0].api_key_env: environment variable A_KEY is not set" in found


def test_unknown_key_in_array_table_is_an_error() -> None:
    """Typos inside [[backends]] do not pass silently."""
    text = GOOD.replace('api_key_env = "A_KEY"', 'api_key_env = "A_KEY"\nwieght = 2')
    assert problems_of(text, {"A_KEY": "x"})[0].startswith("r.toml:9: backends[0].wieght: unknown")


def test_cross_references_are_checked() -> None:
    """Models naming unknown backends and keys naming unknown orgs are rejected."""
    text = GOOD.replace('backend = "a"', 'backend = "b"').replace('org = "acme"', 'org = "nope"')
    assert problems_of(text, {"A_KEY": "x"}) == [
        "r.toml:12: models[0].backends[0].backend: unknown backend 'b'",
        "r.toml:19: keys[0].org: unknown org 'nope'",
    ]


def test_duplicates_and_bad_urls() -> None:
    """Duplicate ids and non-HTTP backend URLs are problems."""
    text = GOOD + '\n[[backends]]\nid = "a"\nurl = "ftp://x"\n'
    found = problems_of(text, {"A_KEY": "x"})
    assert "r.toml:23: backends[1].id: duplicate id 'a'" in found
    assert "r.toml:24: backends[1].url: must start with http:// or https://" in found


def test_syntax_error_has_line_and_column() -> None:
    """A TOML syntax error reports the parser's line."""
    assert problems_of("[server\nlisten = 1") == [
        "r.toml:1: TOML syntax: Expected ']' at the end of a table declaration (column 8)"
    ]


def test_wrong_section_type() -> None:
    """A section given as a value is one clear problem."""
    assert problems_of('server = "x"') == ["r.toml:1: server: expected a table, got a string"]


def test_required_key_missing() -> None:
    """A backend without url says which key is missing."""
    assert problems_of('[[backends]]\nid = "a"') == [
        "r.toml:1: backends[0].url: required key is missing"
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:9", ("::1", 9)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
    ],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    """HOST:PORT parses, IPv6 in brackets included."""
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["8080", "host:", ":80", "h:99999", "h:x"])
def test_parse_listen_rejects(value: str) -> None:
    """Malformed listen addresses are errors."""
    with pytest.raises(ValueError, match=r"expected|out of range"):
        parse_listen(value)


def test_bad_listen_in_file() -> None:
    """A malformed listen address is reported at its line."""
    assert problems_of('[server]\nlisten = "nope"') == [
        "r.toml:2: server.listen: expected HOST:PORT, got 'nope'"
    ]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("nope", "expected HOST:PORT or \"public\", got 'nope'"),
        ("127.0.0.1:0", "needs a fixed port (requests are told apart by the port they came in on)"),
        ("0.0.0.0:8080", 'its port must differ from listen\'s (127.0.0.1:8080), or set "public"'),
        (
            "[::1]:9090",
            'its port must differ from metrics_listen\'s (127.0.0.1:9090), or set "public"',
        ),
    ],
)
def test_admin_listen_needs_a_port_of_its_own(value: str, problem: str) -> None:
    """admin_listen is HOST:PORT on a fixed port no other listener has, or "public"."""
    text = f'[server]\nlisten = "127.0.0.1:8080"\nadmin_listen = "{value}"'
    assert problems_of(text) == [f"r.toml:3: server.admin_listen: {problem}"]


def test_admin_listen_default_and_public() -> None:
    """By default the admin routes listen on loopback 8081; "public" is the explicit opt-in."""
    assert Settings().server.admin_listen == "127.0.0.1:8081"
    public = load_text('[server]\nadmin_listen = "public"\nmetrics_listen = ""', "r.toml", {})
    assert public.settings.server.admin_listen == "public"


def test_workers_with_limits_need_redis() -> None:
    """Several workers with in-process limits would each admit the whole limit: refused."""
    text = GOOD.replace('listen = "127.0.0.1:8080"', 'listen = "127.0.0.1:8080"\nworkers = 2')
    limited = text + '\n[[orgs]]\nid = "beta"\nrpm = 10\n'
    assert problems_of(limited, {"A_KEY": "x"}) == [
        "r.toml:4: server.workers: more than 1 worker needs [state] redis_url (or "
        "redis_endpoints) so that the workers share limits and budgets (org 'beta' has "
        "some); set it, or workers = 1",
    ]
    shared = limited.replace(
        "[server]", '[state]\nredis_url = "redis://127.0.0.1:6379"\n\n[server]'
    )
    assert load_text(shared, "r.toml", {"A_KEY": "x"}).settings.server.workers == 2
    # GOOD's orgs have no limits: nothing to share
    assert load_text(text, "r.toml", {"A_KEY": "x"}).settings.server.workers == 2


def test_otlp_endpoint_is_accepted_when_http() -> None:
    """Tracing is supported: an http(s) OTLP endpoint passes, anything else is refused."""
    good = GOOD + '\n[telemetry]\notlp_endpoint = "http://collector:4318"\n'
    loaded = load_text(good, "r.toml", {"A_KEY": "x"})
    assert loaded.settings.telemetry.otlp_endpoint == "http://collector:4318"
    bad = GOOD + '\n[telemetry]\notlp_endpoint = "collector:4317"\n'
    assert problems_of(bad, {"A_KEY": "x"}) == [
        "r.toml:23: telemetry.otlp_endpoint: must start with http(s):// (OTLP/HTTP)"
    ]
