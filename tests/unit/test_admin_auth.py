"""Admin tokens: bearer parsing, lookup by hash, org keys refused, the viewer/operator ladder."""

from __future__ import annotations

import pytest

from appliance.auth.admin import ADMIN_TOKEN_PREFIX, AdminTokens, generate_admin_token
from appliance.auth.keyring import hash_key
from appliance.demo import DEMO_ADMIN_TOKEN, demo_admin_token
from appliance.errors import InsufficientRole, InvalidAdminToken
from appliance.settings import AdminToken, ServerSettings

VIEWER, OPERATOR, ORG_KEY = "rka-viewer-secret", "rka-operator-secret", "rk-org-key"


@pytest.fixture
def tokens() -> AdminTokens:
    return AdminTokens(
        (
            AdminToken(id="dash", sha256=hash_key(VIEWER), role="viewer"),
            AdminToken(id="oncall", sha256=hash_key(OPERATOR), role="operator"),
        )
    )


def test_viewer_may_read(tokens: AdminTokens) -> None:
    """A viewer token passes a viewer check and yields its id."""
    assert tokens.authorize(f"Bearer {VIEWER}", "viewer") == "dash"


def test_operator_may_read_and_change(tokens: AdminTokens) -> None:
    """An operator token passes both checks; the scheme is case-insensitive."""
    assert tokens.authorize(f"Bearer {OPERATOR}", "viewer") == "oncall"
    assert tokens.authorize(f"bearer {OPERATOR}", "operator") == "oncall"


def test_viewer_may_not_change(tokens: AdminTokens) -> None:
    """A viewer asking for an operator action is 403 insufficient_role naming both roles."""
    with pytest.raises(InsufficientRole) as caught:
        tokens.authorize(f"Bearer {VIEWER}", "operator")
    assert caught.value.status == 403
    assert "viewer" in caught.value.message
    assert "operator" in caught.value.message


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer  ", f"Basic {OPERATOR}", OPERATOR, f"Token {OPERATOR}"]
)
def test_missing_or_malformed_header(tokens: AdminTokens, header: str | None) -> None:
    """No usable bearer token is 401 invalid_admin_token."""
    with pytest.raises(InvalidAdminToken) as caught:
        tokens.authorize(header, "viewer")
    assert caught.value.status == 401


def test_unknown_token_is_not_echoed(tokens: AdminTokens) -> None:
    """An unknown token is 401 and the message does not repeat it."""
    with pytest.raises(InvalidAdminToken) as caught:
        tokens.authorize("Bearer rka-guess", "viewer")
    assert "rka-guess" not in caught.value.message


def test_org_api_key_is_refused_with_a_hint(tokens: AdminTokens) -> None:
    """An org API key is 401 with a message saying admin routes need an admin token."""
    with pytest.raises(InvalidAdminToken) as caught:
        tokens.authorize(f"Bearer {ORG_KEY}", "viewer")
    assert "org API key" in caught.value.message
    assert ORG_KEY not in caught.value.message


def test_no_tokens_configured_refuses_everyone_and_says_why() -> None:
    """With no [[admin.tokens]] the admin API is closed to every caller, and the answer says
    the router has none rather than calling the caller's token incorrect."""
    for header in (f"Bearer {OPERATOR}", None):
        with pytest.raises(InvalidAdminToken, match="has no admin tokens configured"):
            AdminTokens(()).authorize(header, "viewer")


@pytest.mark.parametrize(
    ("listen", "admin_listen", "fixed"),
    [
        ("127.0.0.1:8080", "127.0.0.1:8081", True),
        ("[::1]:8080", "public", True),
        ("localhost:8080", "[::1]:8081", True),
        ("0.0.0.0:8080", "public", False),
        ("10.1.2.3:8080", "127.0.0.1:8081", False),
        ("127.0.0.1:8080", "0.0.0.0:8081", False),
        ("router.example:8080", "public", False),
    ],
)
def test_the_demo_token_is_fixed_on_loopback_only(
    listen: str, admin_listen: str, fixed: bool
) -> None:
    """The README's demo token works when every listener taking admin tokens (the admin one,
    and the public one for usage lookups) is on loopback; else each run makes a random one."""
    token = demo_admin_token(ServerSettings(listen=listen, admin_listen=admin_listen))
    assert (token == DEMO_ADMIN_TOKEN) is fixed
    assert token.startswith(ADMIN_TOKEN_PREFIX)


def test_tokens_are_held_by_hash_only(tokens: AdminTokens) -> None:
    """The index never holds a token in clear, only its sha256."""
    held = repr(tokens._by_hash)
    assert VIEWER not in held
    assert OPERATOR not in held
    assert hash_key(OPERATOR) in held


def test_generated_tokens_are_distinct_and_prefixed() -> None:
    """New admin tokens carry their own prefix (not an org key's) and never repeat."""
    made = {generate_admin_token() for _ in range(100)}
    assert len(made) == 100
    assert all(t.startswith(ADMIN_TOKEN_PREFIX) and len(t) > 40 for t in made)
