"""dsCertPEM for client libraries that take their CA bundle as a file (botocore, requests, azure-core).

Every datastore trusts the same thing: the usual public roots plus the
datastore's own CA certificates, as the HTTP datastore does (``http.ssl_context``).
The bundle is a private temp file (0600), written once per client and removed
when the client closes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .http import ssl_context

__all__ = ["ca_bundle_file", "remove_ca_bundle"]


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
