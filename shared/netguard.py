"""Which hosts and addresses an agent's browser, a desktop's programs or a webhook may reach.

The building blocks of the worker's egress proxy (``worker/egress/``) and of the webhook sender:

- :func:`ip_literal` reads a host written as an address in any form a browser or ``inet_aton`` accepts
  (``127.1``, ``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``[::ffff:127.0.0.1]``);
- :func:`address_refusal` says why an address is not one an agent may reach (loopback, private, link-local, CGNAT,
  multicast, reserved, unspecified, and those hidden inside IPv4-mapped, NAT64 and 6to4 IPv6 addresses);
- :func:`resolve` turns a name into addresses (a static hosts map first, ``localhost`` names, then DNS);
- :func:`clean_domain_patterns` / :func:`domain_allowed` validate and match ``allowed_domains`` patterns;
- :class:`NetworkGuard` checks a URL before it is fetched (webhooks, and the early check of a ``navigate``).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
"""RFC 6052 well-known NAT64 prefix: the last 32 bits are the IPv4 address the NAT64 gateway connects to."""
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
"""RFC 8215 local-use NAT64 prefix: translates into the operator's own networks."""
_NUMERIC_HOST = re.compile(r"[0-9a-fx.]+", re.IGNORECASE)
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def normalize_host(host: str) -> str:
    """A host as the proxy compares it: lower case, without IPv6 brackets, zone id or trailing dots
    ("LOCALHOST." -> "localhost", "[::1]" -> "::1")."""
    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    return h.split("%")[0].rstrip(".")


def ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, or None when it is a name.

    IPv4 is read as ``inet_aton`` and the WHATWG URL parser read it: one to four parts, each decimal, octal
    (leading 0) or hex (0x): "127.1", "2130706433", "0x7f000001", "0177.0.0.1" are all 127.0.0.1. IPv6 may carry
    brackets and a zone id. ``host`` need not be normalized.
    """
    h = normalize_host(host)
    if ":" in h:
        try:
            return ipaddress.IPv6Address(h)
        except ValueError:
            return None
    if not h or not _NUMERIC_HOST.fullmatch(h) or h.count(".") > 3:
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(h))
    except OSError:
        return None


def address_refusal(address: IPAddress) -> str | None:
    """Why ``address`` is not globally routable (a short phrase such as "loopback" or "IPv4-mapped loopback"), or
    None when an agent may reach it.

    IPv6 addresses that carry an IPv4 address are judged by that address: IPv4-mapped (``::ffff:0:0/96``), NAT64
    (``64:ff9b::/96``) and 6to4 (``2002::/16``); the local-use NAT64 prefix (``64:ff9b:1::/48``) and IPv4-compatible
    addresses (``::/96``) are refused outright.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            inner = address_refusal(address.ipv4_mapped)
            return f"IPv4-mapped {inner}" if inner else None
        if address in _NAT64:
            inner = address_refusal(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
            return f"NAT64 of {inner}" if inner else None
        if address in _NAT64_LOCAL:
            return "local-use NAT64"
        if address.sixtofour is not None:
            inner = address_refusal(address.sixtofour)
            return f"6to4 of {inner}" if inner else None
        if int(address) >> 32 == 0 and not address.is_loopback and not address.is_unspecified:
            return "IPv4-compatible (deprecated)"
    if address.is_loopback:
        return "loopback"
    if address.is_unspecified:
        return "unspecified"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "CGNAT"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "not globally routable"
    return None


def is_localhost_name(name: str) -> bool:
    """Whether ``name`` (normalized) is "localhost" or under it: RFC 6761 names that browsers map to loopback
    themselves, whatever DNS says."""
    return name == "localhost" or name.endswith(".localhost")


def parse_hosts(entries: Iterable[str]) -> dict[str, list[IPAddress]]:
    """``name=address`` entries (``LODESTAR_EGRESS_HOSTS``) as a map of normalized name -> addresses; a name given
    several times gets all its addresses, in order.

    Raises:
        ValueError: an entry without "=", or whose address is not an IP address (the message names it).
    """
    out: dict[str, list[IPAddress]] = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        address = ip_literal(value) if sep else None
        if not name.strip() or address is None:
            raise ValueError(f"egress hosts entry {entry!r}: expected name=address, e.g. intranet.test=10.0.0.5")
        out.setdefault(normalize_host(name), []).append(address)
    return out


def resolve(host: str, hosts: Mapping[str, Sequence[IPAddress]] | None = None) -> list[IPAddress]:
    """Every address ``host`` stands for, each once, in order: an address literal itself; else the ``hosts`` map
    (normalized names); else loopback for ``localhost`` names; else the system resolver (``getaddrinfo``).

    Returns [] when the name does not resolve.
    """
    literal = ip_literal(host)
    if literal is not None:
        return [literal]
    name = normalize_host(host)
    if hosts and name in hosts:
        return list(dict.fromkeys(hosts[name]))
    if is_localhost_name(name):
        return [ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1")]
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


# --- allowed_domains patterns ----------------------------------------------------------------------------------------
_H = "[0-9A-Fa-f]{1,4}"
_IPV6 = "|".join([  # RFC 4291 text forms without an embedded IPv4 address or a zone id
    f"(?:{_H}:){{7}}{_H}", f"(?:{_H}:){{1,7}}:", f"(?:{_H}:){{1,6}}:{_H}", f"(?:{_H}:){{1,5}}(?::{_H}){{1,2}}",
    f"(?:{_H}:){{1,4}}(?::{_H}){{1,3}}", f"(?:{_H}:){{1,3}}(?::{_H}){{1,4}}", f"(?:{_H}:){{1,2}}(?::{_H}){{1,5}}",
    f"{_H}:(?::{_H}){{1,6}}", f":(?::{_H}){{1,7}}", "::"])
_HOST_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?"
_NUMERIC_NAME = r"[0-9A-Fa-fXx]+(?:\.[0-9A-Fa-fXx]+){0,3}\.?$"  # what may spell an IPv4 address
DOMAIN_PATTERN = rf"^(?:\*\.(?!{_NUMERIC_NAME}){_HOST_NAME}|{_HOST_NAME}|\[(?:{_IPV6})\])$"
"""What an ``allowed_domains`` pattern may be, as a regular expression that Python and ECMA 262 (JSON Schema's
``pattern``) read alike: a host name in ASCII (international names in their ``xn--`` form), optionally after "*.";
or an IPv6 address in brackets. Every string it matches is a valid pattern, and only those (the OpenAPI document
says the same)."""
DOMAIN_MAX_CHARS = 253
"""The longest pattern (a DNS name's longest text form)."""
_DOMAIN = re.compile(DOMAIN_PATTERN)


def clean_domain_patterns(patterns: Iterable[str]) -> list[str]:
    """Validate ``allowed_domains`` patterns and return them normalized (lower case, no trailing dot, an address in
    its standard form, duplicates dropped).

    A pattern is a host name in ASCII ("example.com": that host only; "xn--bcher-kva.de" for "bücher.de"), "*." and
    a host name ("*.example.org": any name under example.org, not example.org itself; not an address), or an IP
    address: IPv4 in any notation a URL accepts ("127.1"), IPv6 in brackets ("[::1]"). Exactly the strings of at
    most :data:`DOMAIN_MAX_CHARS` characters that :data:`DOMAIN_PATTERN` matches.

    Raises:
        ValueError: the first bad pattern, named, and why.
    """
    out: list[str] = []
    for raw in patterns:
        if not isinstance(raw, str):
            raise ValueError(f"{raw!r} is not a string")
        if len(raw) > DOMAIN_MAX_CHARS or not _DOMAIN.fullmatch(raw):
            hint = ""
            try:
                ascii_form = raw.encode("idna").decode("ascii") if not raw.isascii() else raw
                if ascii_form != raw and _DOMAIN.fullmatch(ascii_form):
                    hint = f"; write international names in their ASCII form: {ascii_form!r}"
            except UnicodeError:
                pass
            raise ValueError(f"{raw!r} is not a host name, *.<host name> or IP address (letters, digits, hyphens "
                             f"and dots, at most {DOMAIN_MAX_CHARS} characters; IPv6 in brackets; no scheme, port, "
                             f"path or other wildcard){hint}")
        pattern = raw.lower().rstrip(".")
        wildcard = pattern.startswith("*.")
        literal = None if wildcard else ip_literal(pattern)
        out.append(str(literal) if literal is not None else pattern)
    return list(dict.fromkeys(out))


def domain_allowed(host: str, patterns: Sequence[str]) -> bool:
    """Whether ``host`` (as the URL wrote it) matches one of the cleaned ``patterns``; an empty list allows any."""
    if not patterns:
        return True
    literal = ip_literal(host)
    name = str(literal) if literal is not None else normalize_host(host)
    for pattern in patterns:
        if pattern.startswith("*."):
            if literal is None and name.endswith(pattern[1:]):
                return True
        elif name == pattern:
            return True
    return False


class NetworkGuard:
    """Decides whether a URL may be fetched: http(s) and ws(s) only, and no private addresses unless allowed.

    A host is private when any address it stands for has an :func:`address_refusal` (loopback, RFC 1918, fc00::/7,
    link-local, CGNAT, multicast, reserved, unspecified, or one of those inside an IPv4-mapped, NAT64 or 6to4
    address), or when it is a ``localhost`` name. ``allowed_hosts`` entries are "host" or "host:port" ("[::1]:8080"
    for IPv6). A name that does not resolve is let through (the fetch fails on its own).
    Resolution results are cached per host for the life of the guard.

    The worker's egress proxy (``worker/egress/``) makes the same checks on every connection and connects to the
    address it checked; this class checks a URL once, before the fetch (webhooks, and the early refusal of a
    ``navigate``).
    """

    def __init__(self, allow_private: bool, allowed_hosts: tuple[str, ...] = (),
                 setting: str = "LODESTAR_BROWSER_ALLOWED_HOSTS"):
        self.allow_private = allow_private
        self.setting = setting
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self._cache: dict[str, str | None] = {}

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
            self._cache[host] = self._private(host)
        found = self._cache[host]
        return f"host {host!r} is a private address ({found}; set {self.setting})" if found else None

    def pin(self, url: str) -> tuple[str | None, IPAddress | None]:
        """Check ``url`` and choose the address to connect to, resolving its host once: ``(None, address)`` when it
        may be fetched, ``(reason, None)`` when not (a refused scheme or address, or a name that does not
        resolve). The caller connects to that address, not to the name, so the answer cannot change in between
        (DNS rebinding)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            return f"scheme {parts.scheme!r} is not allowed", None
        host = (parts.hostname or "").lower()
        try:
            port = parts.port
        except ValueError:
            return f"bad port in {url!r}", None
        host_port = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        addresses = resolve(host)
        if not addresses:
            return f"host {host!r} does not resolve", None
        if not (self.allow_private or host in self.allowed_hosts or host_port in self.allowed_hosts):
            for address in addresses:
                reason = address_refusal(address)
                if reason or is_localhost_name(normalize_host(host)):
                    return f"host {host!r} is a private address ({reason or 'loopback'}; set {self.setting})", None
        return None, addresses[0]

    @staticmethod
    def _private(host: str) -> str | None:
        if is_localhost_name(normalize_host(host)):
            return "loopback"
        for address in resolve(host):
            reason = address_refusal(address)
            if reason:
                return reason
        return None
