"""Who may use the server: loopback by default, a bearer key for anything wider."""

from __future__ import annotations

import hmac
import ipaddress
import socket

from ..errors import UsageError
from .errors import APIError


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address (127.0.0.0/8, ::1)."""
    name = host.strip("[]")
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:  # a host name: every address it resolves to must be loopback ("localhost" usually is)
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without a key: anyone on the network could use the model."""
    if api_key:
        return
    if not is_loopback(host):
        raise UsageError(
            f"refusing to listen on {host} without --api-key: anyone who can reach it could use the model",
            hint='add --api-key "$KEY" (clients send `Authorization: Bearer $KEY`), or keep the default --host 127.0.0.1',
            param="host",
        )


def check_bearer(header: str | None, api_key: str | None) -> None:
    """Raise a 401 unless ``header`` is ``Bearer <api_key>`` (compared in constant time)."""
    if not api_key:
        return
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise APIError(401, "missing or wrong API key: send `Authorization: Bearer KEY`", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
