"""Admin tokens: resolve a bearer token to its id and check its role, by sha256 only.

Admin tokens are a separate namespace from org API keys: an org key never opens an admin
route, whatever org it belongs to, and an admin token never calls a model.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Literal

from appliance.auth.keyring import KEY_PREFIX, bearer_token, hash_key
from appliance.errors import InsufficientRole, InvalidAdminToken
from appliance.settings import AdminToken

Role = Literal["viewer", "operator"]
# Distinct from org keys' "rk-", so a pasted org key is easy to spot and explain.
ADMIN_TOKEN_PREFIX = "rka-"  # noqa: S105 - a prefix, not a secret
_RANK: dict[Role, int] = {"viewer": 0, "operator": 1}


def generate_admin_token() -> str:
    """A new random admin token: 256 bits of entropy, URL-safe."""
    return ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)


class AdminTokens:
    """An immutable index of configured admin tokens by hash; rebuilt on reload."""

    __slots__ = ("_by_hash", "_none")

    def __init__(self, tokens: Iterable[AdminToken]) -> None:
        self._by_hash: dict[str, tuple[str, Role]] = {t.sha256: (t.id, t.role) for t in tokens}
        self._none = not self._by_hash  # checked first: no token can match

    def authorize(self, authorization: str | None, need: Role) -> str:
        """The id of the token in an `Authorization` header value, if its role allows `need`."""
        if self._none:  # no token can be right: say so instead of "incorrect"
            raise InvalidAdminToken(
                "This router has no admin tokens configured: add an [[admin.tokens]] entry "
                "(`routerctl keys create-admin` prints one) and reload."
            )
        token = bearer_token(authorization)
        if token is None:
            raise InvalidAdminToken()
        found = self._by_hash.get(hash_key(token))
        if found is None:
            if token.startswith(KEY_PREFIX):
                raise InvalidAdminToken(
                    "This is an org API key; admin routes need an admin token "
                    "(create one with `routerctl keys create-admin`)."
                )
            raise InvalidAdminToken("Incorrect admin token provided.")
        token_id, role = found
        if _RANK[role] < _RANK[need]:
            raise InsufficientRole(
                f"The admin token '{token_id}' has the {role} role; this needs the {need} role."
            )
        return token_id
