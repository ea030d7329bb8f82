"""Keys and admin tokens are looked up by their sha256 only: the raw token is never compared
with anything, so how long a lookup takes cannot tell how much of a real key was guessed.

Timing is not measured (too noisy to prove anything); the code path is. A dict lookup by a
digest compares digests, and a caller cannot choose a digest near a stored one without a
sha256 preimage.
"""

from __future__ import annotations

import contextlib
import re

import pytest

from appliance.auth.admin import AdminTokens
from appliance.auth.keyring import Keyring, hash_key
from appliance.errors import RouterError
from appliance.settings import AdminToken, ApiKey, Org, Settings
from tests.reliability import Figures

KEY = "rk-lookup-" + "k" * 40
TOKEN = "rka-lookup-" + "t" * 40
_DIGEST = re.compile(r"[0-9a-f]{64}")


class LookupSpy(dict[str, object]):
    """An index that records every key it is asked for."""

    def __init__(self, source: dict[str, object]) -> None:
        super().__init__(source)
        self.asked: list[object] = []

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.asked.append(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> object:
        self.asked.append(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.asked.append(key)
        return super().__contains__(key)


def near_misses(secret: str) -> list[str]:
    """The secret itself and guesses that share all but one character, or a prefix, with it."""
    return [
        secret,
        secret[:-1] + ("x" if secret[-1] != "x" else "y"),
        ("x" if secret[0] != "x" else "y") + secret[1:],
        secret[: len(secret) // 2],
        secret + "0",
        "rk-" + "0" * 40,
    ]


@pytest.mark.reliability("6.3", "keys compared in constant time (digest lookup, code path)")
def test_keys_and_admin_tokens_are_found_by_digest_only(figures: Figures) -> None:
    """Every presented key or admin token is hashed and looked up once by its digest; the
    indexes hold digests only, so no comparison ever sees the raw token."""
    keyring = Keyring(
        Settings(
            orgs=(Org(id="acme"),),
            keys=(ApiKey(id="k", org="acme", sha256=hash_key(KEY)),),
        )
    )
    tokens = AdminTokens((AdminToken(id="oncall", sha256=hash_key(TOKEN), role="operator"),))
    key_index = LookupSpy(keyring._by_hash)  # type: ignore[arg-type]
    token_index = LookupSpy(tokens._by_hash)  # type: ignore[arg-type]
    keyring._by_hash = key_index  # type: ignore[assignment]
    tokens._by_hash = token_index  # type: ignore[assignment]
    tried = near_misses(KEY) + near_misses(TOKEN)
    expected = [hash_key(t) for t in tried]
    for token in tried:
        with contextlib.suppress(RouterError):
            keyring.resolve(f"Bearer {token}")
        with contextlib.suppress(RouterError):
            tokens.authorize(f"Bearer {token}", "viewer")
    not_digests = [k for k in key_index.asked + token_index.asked if k not in expected]
    figures.add("keys and tokens tried", len(tried) * 2)
    figures.add("lookups by anything but the sha256", len(not_digests), bound=0)
    assert key_index.asked == expected
    assert token_index.asked == expected
    assert not_digests == []
    assert all(_DIGEST.fullmatch(k) for k in [*key_index, *token_index])
    # Nothing else in either object could be compared with a token: they hold the index only.
    assert set(vars(keyring)) == {"_by_hash"}
    assert set(AdminTokens.__slots__) == {"_by_hash", "_none"}
