"""Which URLs an agent's browser or a webhook may reach: http(s) only, and no private addresses unless allowed."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class NetworkGuard:
    """Decides whether an agent's browser may reach a URL: http(s) only, and no private addresses unless allowed.

    A host is private when any address it resolves to is not globally routable (loopback, RFC 1918, fc00::/7,
    link-local, CGNAT 100.64.0.0/10, reserved, unspecified) or multicast. ``allowed_hosts`` entries are "host"
    or "host:port" ("[::1]:8080" for IPv6).
    Resolution results are cached per host for the life of the guard (one task).
    """

    def __init__(self, allow_private: bool, allowed_hosts: tuple[str, ...] = (),
                 setting: str = "LODESTAR_BROWSER_ALLOWED_HOSTS"):
        self.allow_private = allow_private
        self.setting = setting
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self._cache: dict[str, bool] = {}

    def check(self, url: str) -> str | None:
        """Return None when ``url`` may be fetched, else the reason it may not."""
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "about", "chrome-error"):  # local pages (chrome-error: a failed load)
            return None
        if parts.scheme not in ("http", "https", "ws", "wss"):
            return f"scheme {parts.scheme!r} is not allowed"
        host = (parts.hostname or "").lower()
        try:
            port = parts.port
        except ValueError:
            return f"bad port in {url!r}"
        host_port = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if self.allow_private or host in self.allowed_hosts or host_port in self.allowed_hosts:
            return None
        if host not in self._cache:
            self._cache[host] = self._is_private(host)
        return f"host {host!r} is a private address (set {self.setting})" if self._cache[host] else None

    @staticmethod
    def _is_private(host: str) -> bool:
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = socket.getaddrinfo(host, None)
            except OSError:
                return False  # unresolvable: the browser will fail on its own
            addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        # not is_global: RFC 1918, loopback, link-local (cloud metadata), CGNAT 100.64/10, reserved, documentation...
        return any(not a.is_global or a.is_multicast for a in addresses)
