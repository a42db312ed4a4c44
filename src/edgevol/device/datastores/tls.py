"""How the object stores' client libraries (botocore, requests, azure-core) reach their endpoint safely.

- One rule for an endpoint in ``fqdn``: https unless the host is loopback, and
  no user info, query or fragment (never echoed: that is where a pasted
  credential or SAS token would be).
- dsCertPEM as a CA bundle file: every datastore trusts the same thing, the
  usual public roots plus the datastore's own CA certificates, as the HTTP
  datastore does (``http.ssl_context``). The bundle is a private temp file
  (0600), written once per client and removed when the client closes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from edgevol.netaddr import is_loopback_host

from .base import ConfigError
from .http import ssl_context

__all__ = ["ca_bundle_file", "endpoint_url", "remove_ca_bundle"]


def endpoint_url(fqdn: str, what: str) -> str | None:
    """The endpoint URL in ``fqdn`` (https when it names no scheme), or None when empty (the service's own).

    ``what`` names it in errors, e.g. "S3 endpoint". Raises ConfigError for another scheme, user info, a
    query or a fragment, and plain HTTP to anything but loopback (credentials and content would travel
    unprotected).
    """
    fqdn = fqdn.strip()
    if not fqdn:
        return None
    url = fqdn if "://" in fqdn else f"https://{fqdn}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what} {fqdn!r} is not an http(s) URL")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise ConfigError(f"the {what} in fqdn carries no user info, query or fragment (not repeated here): "
                          "credentials go in apiKey and password")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError(f"{what} {fqdn!r} is plain HTTP; only a loopback one may be (credentials and content "
                          "would travel unprotected)")
    return url.rstrip("/")


def ca_bundle_file(ca_pems: Sequence[bytes], kind: str) -> str | None:
    """The path of a bundle of certifi's roots and ``ca_pems``; None (the library's default) when there are none.

    Raises ConfigError, naming the certificate, when one of them is not a usable PEM certificate.
    """
    if not ca_pems:
        return None
    ssl_context(ca_pems)  # refuses an unusable certificate before anything is written
    import certifi  # the roots requests and botocore trust by default

    fd, name = tempfile.mkstemp(prefix=f"edgevol-{kind}-ca-", suffix=".pem")
    with os.fdopen(fd, "wb") as f:
        f.write(Path(certifi.where()).read_bytes().rstrip() + b"\n")
        f.write(b"\n".join(bytes(p).strip() for p in ca_pems) + b"\n")
    return name


def remove_ca_bundle(path: str | None) -> None:
    if path is not None:
        Path(path).unlink(missing_ok=True)
