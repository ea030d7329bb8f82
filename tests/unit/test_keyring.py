"""Keyring: bearer parsing, hash lookup, disabled orgs and keys, model allow-lists."""

from __future__ import annotations

import pytest

from appliance.auth.keyring import Keyring, bearer_token, generate_key, hash_key
from appliance.errors import InvalidApiKey, OrgDisabled, RevokedApiKey
from appliance.settings import ApiKey, Backend, Model, ModelRoute, Org, Settings

KEY, OFF_ORG_KEY, OFF_KEY = "rk-one", "rk-two", "rk-three"


@pytest.fixture
def keyring() -> Keyring:
    settings = Settings(
        backends=(Backend(id="b", url="http://x/v1"),),
        models=(
            Model(name="m1", backends=(ModelRoute(backend="b"),)),
            Model(name="m2", backends=(ModelRoute(backend="b"),)),
        ),
        orgs=(Org(id="acme", models=("m1", "m2")), Org(id="gone", disabled=True)),
        keys=(
            ApiKey(id="k1", org="acme", sha256=hash_key(KEY), models=("m1",)),
            ApiKey(id="k2", org="gone", sha256=hash_key(OFF_ORG_KEY)),
            ApiKey(id="k3", org="acme", sha256=hash_key(OFF_KEY), disabled=True),
        ),
    )
    return Keyring(settings)


def test_resolves_known_key(keyring: Keyring) -> None:
    """A configured key resolves to its org, and key ∩ org models."""
    principal = keyring.resolve(f"Bearer {KEY}")
    assert (principal.key_id, principal.org_id) == ("k1", "acme")
    assert principal.may_use("m1")
    assert not principal.may_use("m2")


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic abc", "rk-one"])
def test_missing_or_malformed_header(keyring: Keyring, header: str | None) -> None:
    """No usable bearer token is 401 invalid_api_key."""
    with pytest.raises(InvalidApiKey):
        keyring.resolve(header)


def test_unknown_key(keyring: Keyring) -> None:
    """An unknown key is 401 and the message does not echo it."""
    with pytest.raises(InvalidApiKey) as caught:
        keyring.resolve("Bearer rk-nope")
    assert "rk-nope" not in caught.value.message


def test_disabled_org_and_revoked_key(keyring: Keyring) -> None:
    """Keys of a disabled org are 403; a revoked key is refused exactly as an unknown one."""
    with pytest.raises(OrgDisabled):
        keyring.resolve(f"Bearer {OFF_ORG_KEY}")
    with pytest.raises(InvalidApiKey) as revoked:
        keyring.resolve(f"bearer {OFF_KEY}")
    with pytest.raises(InvalidApiKey) as unknown:
        keyring.resolve("Bearer rk-never-issued")
    assert revoked.value.body() == unknown.value.body()


def test_generated_keys_are_random_and_prefixed() -> None:
    """Minted keys are distinct, prefixed and long."""
    keys = {generate_key() for _ in range(50)}
    assert len(keys) == 50
    assert all(k.startswith("rk-") and len(k) > 40 for k in keys)


def test_bearer_token_scheme_is_case_insensitive() -> None:
    """'bearer' and 'Bearer' both work, surrounding spaces ignored."""
    assert bearer_token("bearer  abc ") == "abc"


def test_a_revoked_key_answers_as_an_unknown_key_but_names_itself_to_the_log(
    keyring: Keyring,
) -> None:
    """A disabled key gets exactly an unknown key's answer; only the raised error (which the
    access log reads, the client never) carries its key and org ids."""
    with pytest.raises(RevokedApiKey) as revoked:
        keyring.resolve(f"Bearer {OFF_KEY}")
    with pytest.raises(InvalidApiKey) as unknown:
        keyring.resolve("Bearer rk-never-issued")
    assert not isinstance(unknown.value, RevokedApiKey)
    assert (revoked.value.key_id, revoked.value.org_id) == ("k3", "acme")
    assert revoked.value.status == unknown.value.status
    assert revoked.value.body() == unknown.value.body()
    assert b"k3" not in revoked.value.body()
