"""Which HTTP(S) proxy, if any, a download's connection goes through: decided here once for every datastore.

Every datastore client asks :func:`choose` (or :func:`choose_for_url`) for each connection it opens, so
the rules live in one place:

- An ``http://`` target goes through the HTTP proxy, an ``https://`` one through the HTTPS proxy, as
  EVE's controllerconn.ProxyConfig does; an SFTP server is dialled through a CONNECT tunnel of the HTTP
  proxy (EVE looks an SFTP address up as ``http://``), or of the HTTPS proxy when only that is set.
- The no-proxy list (EVE's ``ProxyConfig.exceptions``, or ``NO_PROXY``) has EVE's format: ``*``, an IP,
  a CIDR, a host name (which also matches its subdomains), ``.domain`` or ``*.domain`` (subdomains
  only), each optionally with ``:port``.
- Unlike EVE, loopback targets are not implicitly direct: the no-proxy list says what is.

A proxy URL may carry ``user:password@``; nothing here puts them in a message (:func:`redact`).
This module imports only the standard library; each client library is imported by the helper for it.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from edgevol.model.desired import ProxySettings
from edgevol.model.proxyconfig import (
    DEFAULT_PORTS,
    ProxyConfigError,
    entry_parts,
    parse_no_proxy,
    parse_proxy_url,
)

from .base import DatastoreError, PermanentError, TransientError

__all__ = [
    "botocore_proxies", "cert_failure", "choose", "choose_for_url", "effective", "failure_reason",
    "from_environment", "proxy_failure", "redact", "requests_adapter", "tunnel", "tunnel_status",
    "where",
]

_STATUS = re.compile(r"(?:^|Tunnel connection failed: )([1-5][0-9][0-9])\b")
CA_HINT = ("a proxy with a private CA, or one that intercepts TLS, needs that CA in "
           "edgevol.download.proxy.ca.pem")
CREDENTIALS_HINT = ("check the user:password in the proxy URL (edgevol.download.proxy.http/https, or "
                    "HTTP(S)_PROXY in the agent's environment)")


# -- deciding -------------------------------------------------------------------------------------


def choose(settings: ProxySettings | None, scheme: str, host: str, port: int | None = None) -> str | None:
    """The proxy URL for a connection to ``scheme://host:port``, or None to connect directly."""
    if settings is None:
        return None
    scheme = scheme.lower()
    if scheme == "https":
        proxy = settings.https_proxy
    elif scheme == "http":
        proxy = settings.http_proxy
    else:  # sftp: a CONNECT tunnel
        proxy = settings.http_proxy or settings.https_proxy
    if not proxy:
        return None
    host = host.strip("[]").lower().rstrip(".")
    port = port or DEFAULT_PORTS.get(scheme)
    if any(_matches(entry, host, port) for entry in settings.no_proxy):
        return None
    return proxy


def choose_for_url(settings: ProxySettings | None, url: str) -> str | None:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return choose(settings, parts.scheme, parts.hostname or "", port)


def _matches(entry: str, host: str, port: int | None) -> bool:
    if entry == "*":
        return True
    parts = entry_parts(entry)
    if parts is None:
        return False
    pattern, want_port = parts
    if want_port is not None and want_port != port:
        return False
    if "/" in pattern:
        return _ip_in(host, pattern)
    if pattern.startswith("*."):
        pattern = pattern[1:]
    if pattern.startswith("."):
        return host.endswith(pattern)
    if _is_ip(pattern):
        return _is_ip(host) and ipaddress.ip_address(pattern) == ipaddress.ip_address(host)
    return host == pattern or host.endswith("." + pattern)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _ip_in(host: str, cidr: str) -> bool:
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(cidr, strict=False)
    except (ValueError, TypeError):
        return False


# -- where settings come from ------------------------------------------------------------------------


def from_environment(environ: Mapping[str, str]) -> tuple[ProxySettings, list[str]]:
    """The proxies of a process environment, and a warning for each variable that was unusable (and ignored).

    ``HTTP_PROXY``/``HTTPS_PROXY`` (upper case first, as Go reads them), ``ALL_PROXY`` for a scheme that has
    none of its own, and ``NO_PROXY``; a malformed no-proxy entry is dropped on its own.
    """
    warnings: list[str] = []

    def get(name: str) -> tuple[str, str]:
        for key in (name, name.lower()):
            if environ.get(key, "").strip():
                return key, environ[key]
        return name, ""

    def url(name: str) -> str:
        key, value = get(name)
        try:
            return parse_proxy_url(value, f"environment variable {key}")
        except ProxyConfigError as exc:
            warnings.append(str(exc))
            return ""

    fallback = url("ALL_PROXY")
    http, https = url("HTTP_PROXY") or fallback, url("HTTPS_PROXY") or fallback
    key, listed = get("NO_PROXY")
    no_proxy = []
    for entry in listed.split(","):
        try:
            no_proxy.extend(parse_no_proxy(entry, f"environment variable {key}"))
        except ProxyConfigError as exc:
            warnings.append(f"{exc}; that entry is ignored")
    return ProxySettings(http, https, tuple(no_proxy)), warnings


def effective(config: ProxySettings, environment: ProxySettings) -> ProxySettings:
    """The config's proxies win over the environment's, whole; its no-proxy list, when set, over NO_PROXY.

    The config's proxy CA is trusted either way (a transparent intercepting proxy needs it with no proxy set).
    """
    if config.names_a_proxy:
        return config
    return ProxySettings(environment.http_proxy, environment.https_proxy,
                         config.no_proxy or environment.no_proxy, config.ca_pems)


# -- messages and errors ------------------------------------------------------------------------------


def redact(proxy: str) -> str:
    """``scheme://host:port`` of a proxy URL: never its credentials."""
    parts = urlsplit(proxy)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def where(url: str) -> str:
    """A request's URL for a message: no user info, query (an Azure SAS token) or fragment."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def proxy_failure(proxy: str, name: str, *, status: int | None = None, reason: str = "",
                  tls: str | None = None) -> DatastoreError:
    """The error for a connection the proxy failed: unreachable (transient), refused or asking for credentials
    (permanent: a config change is needed), or unable to reach the server itself (transient)."""
    via = f"{name}: through proxy {redact(proxy)}"
    if tls is not None:
        return PermanentError(f"{via}: TLS certificate verification failed ({tls}); {CA_HINT}")
    if status in (401, 407):  # 407 is the standard answer; some proxies (tinyproxy) refuse wrong ones with 401
        return PermanentError(f"{via}: the proxy answered HTTP {status} (proxy authentication): it wants "
                              f"credentials it did not get or refused the ones configured; {CREDENTIALS_HINT}")
    if status == 403:
        return PermanentError(f"{via}: the proxy refused the connection (HTTP 403: its access rules do not "
                              "allow it)")
    if status is not None and 400 <= status < 500 and status not in (408, 429):
        return PermanentError(f"{via}: the proxy refused the request (HTTP {status})")
    if status is not None:
        return TransientError(f"{via}: the proxy answered HTTP {status}: it could not reach the server")
    return TransientError(f"{via}: cannot reach the proxy: {reason or 'connection failed'}")


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps, as the libraries nest them (cause, context, reason, args, error)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        nested = [cur.__cause__, cur.__context__, getattr(cur, "reason", None), getattr(cur, "error", None),
                  getattr(cur, "inner_exception", None), *(getattr(cur, "kwargs", None) or {}).values(), *cur.args]
        todo.extend(e for e in nested if isinstance(e, BaseException))


def tunnel_status(exc: BaseException) -> int | None:
    """The HTTP status a proxy answered a CONNECT with, from whichever library reported it."""
    for cur in causes(exc):
        code = getattr(cur, "error_code", None)  # python-socks
        if isinstance(code, int) and 100 <= code < 600:
            return code
        match = _STATUS.search(str(cur))  # urllib3: "Tunnel connection failed: 407 ..."; httpcore: "407 ..."
        if match:
            return int(match.group(1))
    return None


def failure_reason(exc: BaseException) -> str:
    """Why a connection failed, briefly: the OS's words when there are any."""
    for cur in causes(exc):
        if isinstance(cur, TimeoutError) or "timed out" in str(cur).lower():
            return "no answer (timed out)"
        if isinstance(cur, OSError) and cur.strerror:
            return cur.strerror
    return type(exc).__name__


def cert_failure(exc: BaseException) -> str | None:
    """The verification reason when ``exc`` comes from a rejected TLS certificate."""
    found = None
    for cur in causes(exc):
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur.verify_message or "certificate rejected"
        if "CERTIFICATE_VERIFY_FAILED" in str(cur):
            found = "certificate rejected"
    return found


# -- each client library --------------------------------------------------------------------------------


def requests_adapter(settings: ProxySettings | None, base: type | None = None, **kwargs: Any) -> Any:
    """A requests transport adapter that sends each request direct or through :func:`choose_for_url`'s proxy.

    Used with a session whose ``trust_env`` is off, so only this decides. A proxy's failure raises the
    DatastoreError of :func:`proxy_failure` (the URL in it without query: an Azure SAS token lives there).
    """
    import requests

    parent = base or requests.adapters.HTTPAdapter

    class ProxyRoutingAdapter(parent):  # type: ignore[misc, valid-type]
        def send(self, request: Any, stream: bool = False, timeout: Any = None, verify: Any = True,
                 cert: Any = None, proxies: Any = None) -> Any:
            proxy = choose_for_url(settings, request.url)
            if proxy is None:
                return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies={})
            scheme = urlsplit(request.url).scheme
            try:
                resp = super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert,
                                    proxies={scheme: proxy})
            except (requests.exceptions.ProxyError, requests.exceptions.SSLError,
                    requests.exceptions.ConnectTimeout) as exc:
                tls = cert_failure(exc)
                if isinstance(exc, requests.exceptions.SSLError) and tls is None:
                    raise
                raise proxy_failure(proxy, where(request.url), status=tunnel_status(exc),
                                    reason=failure_reason(exc), tls=tls) from exc
            if resp.status_code == 407:  # a plain-HTTP request the proxy answered itself
                resp.close()
                raise proxy_failure(proxy, where(request.url), status=407)
            return resp

        def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
            """requests verifies nothing for a plain-HTTP URL, not even the TLS to an https proxy it is forwarded
            through (``conn`` is then the proxy's https pool): verify that with the session's bundle."""
            super().cert_verify(conn, url, verify, cert)
            if verify and url.lower().startswith("http:") and getattr(conn, "scheme", "") == "https":
                conn.cert_reqs = "CERT_REQUIRED"
                conn.ca_certs = verify if isinstance(verify, str) else requests.certs.where()

    return ProxyRoutingAdapter(**kwargs)


def botocore_proxies(settings: ProxySettings | None, endpoint: str) -> tuple[dict[str, str], str | None]:
    """botocore's ``proxies`` for a client of ``endpoint`` (one host), and the proxy (None: direct).

    An empty dict, not None: botocore reads the environment's proxies when it is given none.
    """
    proxy = choose_for_url(settings, endpoint)
    return ({urlsplit(endpoint).scheme: proxy} if proxy else {}), proxy


def tunnel(proxy: str, host: str, port: int, *, timeout: float, ca_pems: Sequence[bytes], name: str) -> Any:
    """A socket connected to ``host:port`` through an HTTP CONNECT tunnel of ``proxy`` (python-socks).

    For an https:// proxy the socket is TLS to the proxy (verified with the system roots and ``ca_pems``).
    Raises the DatastoreError of :func:`proxy_failure`.
    """
    from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError
    from python_socks.sync.v2 import Proxy

    from .http import ssl_context  # http imports this module: its trust rule is taken when a tunnel is made

    parts = urlsplit(proxy)
    tls = ssl_context(ca_pems) if parts.scheme == "https" else None
    plain = "http://" + parts.netloc  # python-socks names the protocol http://; TLS is proxy_ssl
    try:
        stream = Proxy.from_url(plain, proxy_ssl=tls).connect(host, port, timeout=timeout)
    except ProxyTimeoutError as exc:
        raise proxy_failure(proxy, name, reason="no answer (timed out)") from exc
    except ProxyConnectionError as exc:
        raise proxy_failure(proxy, name, reason=exc.strerror or failure_reason(exc)) from exc
    except ProxyError as exc:
        raise proxy_failure(proxy, name, status=tunnel_status(exc), reason=str(exc)) from exc
    except ssl.SSLError as exc:
        raise proxy_failure(proxy, name, tls=cert_failure(exc) or str(exc)) from exc
    except OSError as exc:
        raise proxy_failure(proxy, name, reason=failure_reason(exc)) from exc
    return stream.socket
