"""End-to-end tests may use the real services too (Kafka for the usage pipeline)."""

from tests.services import kafka_broker, redis_server, restore_services

__all__ = ["kafka_broker", "redis_server", "restore_services"]
