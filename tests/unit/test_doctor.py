"""Doctor's verdicts: thresholds, config rows and the hang guard, without any service."""

from __future__ import annotations

import asyncio

import pytest

from appliance.doctor import thresholds
from appliance.doctor.redis_checks import redis_target
from appliance.doctor.report import CheckResult, any_failed, passed, warned
from appliance.doctor.runner import _bounded
from appliance.doctor.target import check_config, load_target
from appliance.settings.loader import ConfigError

MB = 1024 * 1024
MINIMAL = """\
[[backends]]
id = "gpu-a"
url = "http://127.0.0.1:8001/v1"
api_key_env = "GPU_A_KEY"

[[models]]
name = "chat"
backends = [{backend = "gpu-a"}]
"""


@pytest.mark.parametrize(
    ("skew", "uncertainty", "status"),
    [
        (0.2, 0.001, "pass"),
        (-0.999, 0.0, "pass"),
        (1.005, 0.01, "pass"),  # the round trip could explain the excess over 1 s
        (1.5, 0.01, "warn"),
        (-29.0, 0.0, "warn"),
        (-40.0, 0.01, "fail"),
    ],
)
def test_clock_skew_thresholds(skew: float, uncertainty: float, status: str) -> None:
    """Skew warns from 1 s and fails from 30 s, counting only what the RTT cannot explain."""
    assert thresholds.clock_skew("r", skew, uncertainty).status == status


def test_clock_skew_says_which_way() -> None:
    """The detail says whether this host is ahead of or behind Redis."""
    assert "2.000 s behind Redis" in thresholds.clock_skew("r", -2.0, 0.0).detail
    assert "2.000 s ahead of Redis" in thresholds.clock_skew("r", 2.0, 0.0).detail


@pytest.mark.parametrize(
    ("free_mb", "status"),
    [(100, "fail"), (511, "fail"), (512, "warn"), (1023, "warn"), (1024, "pass")],
)
def test_disk_thresholds(free_mb: int, status: str) -> None:
    """Less free space than the state dir may need fails; less than twice that warns."""
    result = thresholds.disk("/state", free_mb * MB, 512 * MB)
    assert result.status == status
    assert bool(result.fix) == (status != "pass")


def test_disk_under_the_reserve_says_requests_are_refused() -> None:
    """Under state.min_free_mb the disk row fails saying the router refuses every request."""
    result = thresholds.disk("/state", 10 * MB, 5 * MB, reserve_bytes=64 * MB)
    assert result.status == "fail"
    assert "refuses every request" in result.detail
    assert "min_free_mb" in result.detail


@pytest.mark.parametrize(
    ("size", "age", "status"),
    [
        (0, None, "pass"),
        (499, 299.0, "pass"),
        (500, None, "warn"),
        (10, 301.0, "warn"),
        (900, 1.0, "fail"),
    ],
)
def test_outbox_thresholds(size: int, age: float | None, status: str) -> None:
    """The outbox warns at half full or a record older than 5 minutes, fails at 90 % full."""
    assert thresholds.outbox("/o", 1, size, 1000, age).status == status


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("redis://:s3cret@cache.internal:7000/0", "cache.internal:7000"),
        ("rediss://user:s3cret@cache.internal/1", "cache.internal:6379"),
        ("unix:///run/redis/redis.sock", "/run/redis/redis.sock"),
    ],
)
def test_redis_target_never_shows_the_password(url: str, target: str) -> None:
    """The redis rows name host and port (or socket), never the URL's credentials."""
    assert redis_target(url) == target


def test_an_unset_backend_secret_is_a_failed_config_row() -> None:
    """A variable missing from the environment fails the config row with file:line and the
    fix, instead of stopping doctor."""
    target = load_target(MINIMAL, "router.toml", {})
    row = check_config(target)
    assert row.status == "fail"
    assert row.detail == (
        "router.toml:4: backends[0].api_key_env: environment variable GPU_A_KEY is not set"
    )
    assert row.fix.startswith("export the variable")
    assert dict(target.config.credentials["gpu-a"].headers) == {}


def test_a_complete_config_passes() -> None:
    """With every variable set the config row passes and counts what the file defines."""
    target = load_target(MINIMAL, "router.toml", {"GPU_A_KEY": "k"})
    assert check_config(target) == passed(
        "config", "router.toml", "valid (1 backend, 1 model, 0 keys)"
    )


def test_a_config_without_models_warns() -> None:
    """A valid file that routes nothing warns: every request would get 404."""
    row = check_config(load_target("", "empty.toml", {}))
    assert row.status == "warn"


def test_an_invalid_config_raises_with_line_and_key() -> None:
    """A file that does not validate is not a row but a ConfigError, as for config validate."""
    with pytest.raises(ConfigError) as caught:
        load_target('[state]\nredis_url = "http://x"\n', "bad.toml", {})
    assert caught.value.problems == [
        "bad.toml:2: state.redis_url: must start with redis://, rediss:// or unix://"
    ]


def test_any_failed_ignores_warnings_and_skips() -> None:
    """Only a fail makes doctor exit 1."""
    warn = warned("disk", "/", "low", "free some")
    assert not any_failed([warn, passed("config", "f", "ok")])
    assert any_failed([warn, CheckResult(check="x", target="-", status="fail", detail="d")])


async def test_a_check_that_never_returns_becomes_one_failed_row() -> None:
    """A check stuck past its timeout and grace is cut off and reported, so doctor ends."""

    async def hang() -> list[CheckResult]:
        await asyncio.Event().wait()
        return []

    (row,) = await _bounded("kafka", hang, timeout_s=0.01)
    assert (row.check, row.status) == ("kafka", "fail")
    assert "did not finish" in row.detail
