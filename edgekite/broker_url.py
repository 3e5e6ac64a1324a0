"""Broker URLs (``mqtt://host:port``, ``mqtts://user:pass@host``), parsed one way for every client.

The edge's bridge, its sync worker and the hub's consumers all connect with paho; they accept the
same schemes (``tcp``/``ssl`` as paho's own aliases), the same default ports (1883, 8883 for TLS)
and credentials in the URL, percent-decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

SCHEMES = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True}  # scheme -> TLS


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str, *, what: str = "broker URL") -> BrokerAddress:
        """``what`` names the setting in the error, e.g. ``"sync.hub_mqtt_url"``."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in SCHEMES:
            raise ValueError(f"{what}: unsupported scheme {parts.scheme!r} (use mqtt:// or mqtts://)")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{what}: {url!r} must not have a path, query or fragment")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{what}: bad port in {url!r}") from None
        if not parts.hostname:
            raise ValueError(f"{what}: {url!r} has no host")
        tls = SCHEMES[parts.scheme]
        return cls(
            parts.hostname,
            port or (8883 if tls else 1883),
            tls,
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None,
        )

    @property
    def url(self) -> str:
        """Canonical form, without credentials (for logs and health)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


__all__ = ["BrokerAddress"]
