"""API keys: resolve a bearer token to a principal by its sha256, never holding keys in clear."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from appliance.errors import InvalidApiKey, OrgDisabled, RevokedApiKey
from appliance.limits.policy import LimitPolicy, build_policy
from appliance.settings import Settings

KEY_PREFIX = "rk-"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key, its org and what they may use."""

    key_id: str
    org_id: str
    models: frozenset[str] | None  # None = every model
    limits: LimitPolicy

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


@dataclass(frozen=True, slots=True)
class _Entry:
    principal: Principal
    key_disabled: bool
    org_disabled: bool


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    """A new random key: 256 bits of entropy, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


class Keyring:
    """An immutable index of configured keys by hash; rebuilt on reload, read per request."""

    def __init__(self, settings: Settings) -> None:
        orgs = {org.id: org for org in settings.orgs}
        self._by_hash: dict[str, _Entry] = {}
        for key in settings.keys:
            org = orgs[key.org]
            principal = Principal(
                key_id=key.id,
                org_id=org.id,
                models=_allowed(org.models, key.models),
                limits=build_policy(org, key),
            )
            self._by_hash[key.sha256] = _Entry(principal, key.disabled, org.disabled)

    def resolve(self, authorization: str | None) -> Principal:
        """The principal of an `Authorization` header value, or an error to answer with."""
        token = bearer_token(authorization)
        if token is None:
            raise InvalidApiKey()
        # Looked up by digest: the comparison's timing depends on the digest, never on how
        # much of a real key the caller guessed.
        entry = self._by_hash.get(hash_key(token))
        if entry is None:
            raise InvalidApiKey("Incorrect API key provided.")
        if entry.key_disabled:
            # A revoked key tells its holder nothing a never-issued key would not.
            raise RevokedApiKey(entry.principal.key_id, entry.principal.org_id)
        if entry.org_disabled:
            raise OrgDisabled()
        return entry.principal


def _allowed(org_models: Iterable[str], key_models: Iterable[str]) -> frozenset[str] | None:
    org_set, key_set = frozenset(org_models), frozenset(key_models)
    if org_set and key_set:
        return org_set & key_set
    return org_set or key_set or None
