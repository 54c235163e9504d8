"""One way to connect to NATS, with the deployment's credentials, for every service and command.

Credentials come from the shared settings (JOBLOG_NATS_USER / _PASSWORD, _TOKEN, _CREDS, _NKEY_SEED,
and JOBLOG_NATS_TLS_CA for a private CA); each process connects as the role it needs
(deploy/nats/nats.conf gives every role least-privilege permissions).
"""
from __future__ import annotations

import ssl
from typing import Any

import nats
import structlog
from nats.aio.client import Client as NATS

from services.contracts.settings import CommonSettings

log = structlog.get_logger("joblog.nats")


def auth_options(settings: CommonSettings) -> dict[str, Any]:
    """nats-py's connect() arguments for the configured credentials and TLS."""
    options: dict[str, Any] = {}
    if settings.nats_user:
        options["user"] = settings.nats_user
        if settings.nats_password is not None:
            options["password"] = settings.nats_password.get_secret_value()
    if settings.nats_token is not None:
        options["token"] = settings.nats_token.get_secret_value()
    if settings.nats_creds is not None:
        options["user_credentials"] = str(settings.nats_creds)
    if settings.nats_nkey_seed is not None:
        options["nkeys_seed"] = str(settings.nats_nkey_seed)
    if settings.nats_tls_ca is not None:
        options["tls"] = ssl.create_default_context(cafile=str(settings.nats_tls_ca))
    return options


async def connect(settings: CommonSettings, name: str, *, reconnect: bool = True, **overrides: Any) -> NATS:
    """A connection named for the process; by default it keeps reconnecting for as long as the process lives."""

    async def on_error(error: Exception) -> None:
        # Permission violations arrive here: say which, once per message, never the credentials.
        log.warning("nats error", error=repr(error), connection=name)

    options: dict[str, Any] = dict(
        servers=settings.nats_servers, name=name, connect_timeout=5, error_cb=on_error,
        max_reconnect_attempts=-1 if reconnect else 1, reconnect_time_wait=0.5, allow_reconnect=reconnect,
    )
    return await nats.connect(**{**options, **auth_options(settings), **overrides})
