"""The immutable view of configuration a request reads once at its start.

A reload (issue 6) builds a new `Runtime` and swaps one reference; requests in flight keep
the one they started with.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.auth.keyring import Keyring
from appliance.routing.selection import RouteTable
from appliance.settings import Settings


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    keyring: Keyring
    routes: RouteTable

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        return cls(settings, Keyring(settings), RouteTable.from_settings(settings))
