"""The OpenAI-compatible mock backend (see docs/mock-backend.md)."""

from appliance.mock.server import MockBackend

__all__ = ["MockBackend"]
