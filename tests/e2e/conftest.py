"""End-to-end tests may use the real services too (Kafka for the usage pipeline), and a
`routerctl mock-backend` process per test module."""

from collections.abc import Iterator

import pytest

from tests.e2e.cli import mock_backend_process
from tests.services import EtcdServer, etcd_binary, kafka_broker, redis_server, restore_services

__all__ = ["etcd", "kafka_broker", "mock_url", "redis_server", "restore_services"]


@pytest.fixture(scope="module")
def mock_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`routerctl mock-backend` as its own process, one per test module; its /v1 URL."""
    with mock_backend_process(tmp_path_factory.mktemp("mock")) as url:
        yield url


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """An etcd member for this module (restored by restore_services after a stop)."""
    server = EtcdServer(etcd_binary(), tmp_path_factory.mktemp("etcd"))
    try:
        server.start()
        yield server
    finally:
        server.retire()
