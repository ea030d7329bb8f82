"""[state] Redis modes: what each mode needs, what it refuses, and the secret kept out."""

from __future__ import annotations

import pytest

from appliance.limits.redis_client import connect_redis
from appliance.settings import StateSettings
from appliance.settings.loader import ConfigError, load_text


def problems(state: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(f"[state]\n{state}\n", "r.toml", environ or {})
    return caught.value.problems


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (
            'redis_mode = "cluster"',
            'r.toml:1: state.redis_endpoints: required when redis_mode = "cluster": seed'
            ' nodes, as ["host:port", ...]',
        ),
        (
            'redis_mode = "sentinel"\nredis_endpoints = ["s1:26379"]',
            'r.toml:1: state.redis_sentinel_master: required when redis_mode = "sentinel":'
            " the master name the sentinels monitor",
        ),
        (
            'redis_endpoints = ["a:7000"]',
            'r.toml:2: state.redis_endpoints: only used with redis_mode = "sentinel" or'
            ' "cluster"; standalone takes redis_url',
        ),
        (
            'redis_mode = "cluster"\nredis_endpoints = ["a:7000", "b"]',
            "r.toml:3: state.redis_endpoints[1]: expected host:port",
        ),
        (
            'redis_mode = "cluster"\nredis_endpoints = ["a:7000"]\nredis_url = "redis://a"',
            'r.toml:4: state.redis_url: redis_mode = "cluster" connects through'
            " redis_endpoints; leave redis_url empty",
        ),
        (
            'redis_url = "redis://a"\nredis_sentinel_master = "m"',
            'r.toml:3: state.redis_sentinel_master: only used with redis_mode = "sentinel",'
            ' not "standalone"',
        ),
        (
            'redis_url = "redis://a"\nredis_username = "router"',
            "r.toml:3: state.redis_username: redis_username needs redis_password_env",
        ),
    ],
)
def test_mode_keys_are_checked_at_load(state: str, expected: str) -> None:
    """A mode missing what it needs, or given what it ignores, fails with a readable line."""
    assert expected in problems(state)


def test_password_variable_must_be_set() -> None:
    """redis_password_env names a variable that must be set where the router loads the file."""
    state = 'redis_url = "redis://a"\nredis_password_env = "REDIS_PW"'
    assert problems(state) == [
        "r.toml:3: state.redis_password_env: environment variable REDIS_PW is not set"
    ]
    loaded = load_text(f"[state]\n{state}\n", "r.toml", {"REDIS_PW": "hunter2"})
    assert "hunter2" not in repr(loaded)


@pytest.mark.parametrize(
    ("state", "mode", "target"),
    [
        (StateSettings(redis_url="redis://:pw@cache:7000/0"), "standalone", "cache:7000"),
        (
            StateSettings(redis_mode="cluster", redis_endpoints=("a:7000", "b:7001")),
            "cluster",
            "a:7000,b:7001",
        ),
        (
            StateSettings(
                redis_mode="sentinel", redis_endpoints=("s:26379",), redis_sentinel_master="m"
            ),
            "sentinel",
            "s:26379",
        ),
    ],
)
async def test_one_builder_per_mode_with_the_password_from_the_environment(
    state: StateSettings, mode: str, target: str
) -> None:
    """Each mode gets its client class, the password from the variable, TLS when asked."""
    import msgspec  # noqa: PLC0415

    secured = msgspec.structs.replace(
        state, redis_username="router", redis_password_env="PW", redis_tls=True
    )
    connection = connect_redis(secured, {"PW": "hunter2"})
    try:
        assert (connection.mode, connection.target) == (mode, target)
        assert type(connection.client).__name__ == (
            "RedisCluster" if mode == "cluster" else "Redis"
        )
        kwargs = (
            connection.client.nodes_manager.connection_kwargs  # type: ignore[union-attr]
            if mode == "cluster"
            else connection.client.connection_pool.connection_kwargs  # type: ignore[union-attr]
        )
        assert (kwargs["username"], kwargs["password"]) == ("router", "hunter2")
        assert "hunter2" not in connection.target
    finally:
        await connection.aclose()
