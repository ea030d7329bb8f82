"""One way to reach the config service from settings: the router, `routerctl config` and
`routerctl doctor` all build their EtcdClient here, so they connect the same way."""

from __future__ import annotations

from collections.abc import Mapping

from appliance.configsvc.etcd_client import EtcdClient, EtcdError
from appliance.settings import Settings


class EtcdSettingsError(ValueError):
    """[config_service] cannot make a client here: a password variable unset, a TLS file
    unreadable, a malformed endpoint. The message is one line and names no secret."""


def etcd_client_from(
    settings: Settings, environ: Mapping[str, str], *, timeout_s: float | None = None
) -> EtcdClient | None:
    """A client (not opened) for `[config_service]`, or None when it names no endpoint.

    The password comes from the variable `password_env` names in `environ`; `timeout_s`
    overrides `[config_service] timeout_s` (each request to one endpoint).
    """
    cs = settings.config_service
    if not cs.etcd_endpoints:
        return None
    password = None
    if cs.password_env:
        password = environ.get(cs.password_env) or None
        if password is None:
            raise EtcdSettingsError(
                f"config_service.password_env: environment variable {cs.password_env} is not set"
            )
    try:
        return EtcdClient(
            cs.etcd_endpoints,
            username=cs.username or None,
            password=password,
            ca_file=cs.ca_file or None,
            cert_file=cs.cert_file or None,
            key_file=cs.key_file or None,
            timeout_s=cs.timeout_s if timeout_s is None else timeout_s,
        )
    except (ValueError, EtcdError) as exc:
        raise EtcdSettingsError(f"config_service: {exc}") from None
