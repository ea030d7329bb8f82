"""The one error `routerctl serve` reports as a single line when the router cannot start."""

from __future__ import annotations


class StartupError(RuntimeError):
    """The app could not start (state dir, stores, an unsupported hypercorn): one line for
    the operator."""
