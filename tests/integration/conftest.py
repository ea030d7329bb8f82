"""Integration tests use the real services started by tests/services.py."""

from tests.services import etcd_server, kafka_broker, redis_server, restore_services

__all__ = ["etcd_server", "kafka_broker", "redis_server", "restore_services"]
