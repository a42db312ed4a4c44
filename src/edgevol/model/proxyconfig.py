"""The download proxy as the config states it: proxy URLs, the no-proxy list and proxy CAs, checked.

Parsing lives with the model because the config parser and the device's environment both produce
:class:`~edgevol.model.desired.ProxySettings`; which proxy a connection takes is the device's business
(``edgevol.device.datastores.proxy``).
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from urllib.parse import urlsplit

__all__ = ["DEFAULT_PORTS", "ProxyConfigError", "entry_parts", "parse_ca_pems", "parse_no_proxy",
           "parse_proxy_url", "valid_host"]

DEFAULT_PORTS = {"http": 80, "https": 443, "sftp": 22}
_HOST = re.compile(r"^[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?$")
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


class ProxyConfigError(ValueError):
    """An unusable proxy setting; the message never holds the credentials a proxy URL may carry."""


def parse_proxy_url(text: str, what: str) -> str:
    """``scheme://[user:password@]host:port`` from ``text`` ("" for empty); http:// when it names no scheme.

    Raises ProxyConfigError for another scheme, no host, a bad port, a path, query or fragment.
    """
    text = text.strip()
    if not text:
        return ""
    shown = "(not repeated here: it holds credentials)" if "@" in text else repr(text)
    url = text if "://" in text else f"http://{text}"
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname or ""
    except ValueError:
        raise ProxyConfigError(f"{what} {shown} is not a proxy URL (want http://host:port)") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ProxyConfigError(f"{what} {shown}: a {scheme} proxy is not supported (want http:// or https://)")
    if not valid_host(host):
        raise ProxyConfigError(f"{what} {shown} names no valid proxy host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxyConfigError(f"{what} {shown}: a proxy URL has no path, query or fragment")
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"[{host}]" if ":" in host else host
    return f"{scheme}://{userinfo + '@' if userinfo else ''}{netloc}:{port or DEFAULT_PORTS[scheme]}"


def parse_no_proxy(text: str, what: str) -> tuple[str, ...]:
    """The comma-separated no-proxy list, lower-case; raises ProxyConfigError naming a malformed entry."""
    entries = []
    for raw in text.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry != "*" and entry_parts(entry) is None:
            raise ProxyConfigError(f"{what}: {raw.strip()!r} is not a host, .domain, IP or CIDR "
                                   "(optionally with :port), nor *")
        entries.append(entry)
    return tuple(entries)


def parse_ca_pems(text: str | bytes, what: str) -> tuple[bytes, ...]:
    """Each PEM certificate in ``text``; raises ProxyConfigError when there is none or one is unusable."""
    data = text.encode() if isinstance(text, str) else text
    pems = tuple(m.group(0) + b"\n" for m in _PEM.finditer(data))
    if not pems:
        raise ProxyConfigError(f"{what} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    for n, pem in enumerate(pems):
        try:
            ssl.create_default_context(cadata=pem.decode("ascii"))
        except (UnicodeDecodeError, ssl.SSLError, ValueError) as exc:
            raise ProxyConfigError(f"{what}: certificate {n + 1} is not usable: {exc}") from None
    return pems


def valid_host(host: str) -> bool:
    if not host:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOST.match(host))


def entry_parts(entry: str) -> tuple[str, int | None] | None:
    """(host, port or None) of a no-proxy entry, or None when it is malformed; a CIDR keeps its /bits."""
    if "/" in entry:
        try:
            ipaddress.ip_network(entry, strict=False)
            return entry, None
        except ValueError:
            return None
    host, port = entry, None
    if entry.startswith("["):  # [v6] or [v6]:port
        host, _, rest = entry[1:].partition("]")
        if rest and not re.fullmatch(r":[0-9]{1,5}", rest):
            return None
        port = int(rest[1:]) if rest else None
    elif entry.count(":") == 1:
        host, _, text = entry.partition(":")
        if not text.isdigit():
            return None
        port = int(text)
    if port is not None and not 0 < port < 65536:
        return None
    bare = host[2:] if host.startswith("*.") else host[1:] if host.startswith(".") else host
    return (host, port) if valid_host(bare) else None
