"""The router appliance: everything `routerctl serve` runs."""

from appliance.build import BUILD, BuildInfo

__all__ = ["BUILD", "BuildInfo"]
