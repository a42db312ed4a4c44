"""Azure Blob datastore (DsAzureBlob): blobs in a container, fetched with ranged GETs through azure-storage-blob.

Field mapping, as EVE's downloader uses them (lf-edge/eve pkg/pillar/cmd/downloader/syncop.go):
``fqdn`` is the blob service URL (``https://ACCOUNT.blob.core.windows.net``, or a path-style
``http://127.0.0.1:10000/ACCOUNT`` for an emulator; ``https://ACCOUNT.blob.core.windows.net`` when
empty), ``dpath`` the container (a blob-name prefix may follow its first ``/``), ``apiKey`` the
account name, ``password`` the account key or a SAS token, and the content tree's URL the blob
name under that prefix.

A fetch attempt is ``ranged.fetch_ranged`` over a HEAD (size and ETag) and ranged GETs made
conditional on that ETag (a replaced blob answers 412 ConditionNotMet: ObjectChanged); this module
classifies failures as transient (network, 5xx, throttling) or permanent (no such container or blob,
refused credentials). The SDK's retry policy is off: the downloader's backoff owns retries. (Its blob
downloader still re-reads a chunk whose body broke off, up to three times, inside one ``read``; no
setting turns that off.)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from edgevol.model.desired import ProxySettings

from .base import ConfigError, NotFoundError, PermanentError, TransientError
from .proxy import requests_adapter
from .ranged import BucketStore, ObjectChanged, ObjectStat
from .tls import ca_bundle_file, endpoint_url, remove_ca_bundle

CHUNK_SIZE = 4 << 20
"""Bytes per GET the SDK holds in memory at once; a ranged read streams as a run of these."""

_NOT_FOUND = {"BlobNotFound", "ContainerNotFound", "ResourceNotFound", "AccountNotFound"}
_DENIED = {"AuthenticationFailed", "AuthorizationFailure", "AuthorizationPermissionMismatch",
           "AuthorizationResourceTypeMismatch", "AuthorizationServiceMismatch", "AuthorizationSourceIPMismatch",
           "AuthorizationProtocolMismatch", "InvalidAuthenticationInfo", "InsufficientAccountPermissions",
           "AccountIsDisabled", "KeyBasedAuthenticationNotPermitted", "NoAuthenticationInformation"}
_TRANSIENT = {"ServerBusy", "OperationTimedOut", "InternalError", "TargetConditionNotMet", "BlobOverwritten"}
_WRAPPED = re.compile(r"^Operation returned an invalid status '(.*)'$")  # a HEAD's answer has no body
_SIG = re.compile(r"(?i)\bsig=[^&\s'\"]*")

# azure-core's HTTP logging policy logs every request and its (redacted) headers at INFO; the agent's
# log is for its own events, and a URL with a SAS token must not reach it even redacted.
logging.getLogger("azure").setLevel(logging.WARNING)


class AzureBlobDatastore(BucketStore):
    """A DsAzureBlob datastore; raises ConfigError for an unusable URL, container, credential or CA certificate."""

    parallel_ranges = True  # a BlobClient is thread-safe, and Blob storage serves ranges of one blob in parallel

    def __init__(self, fqdn: str, dpath: str, *, api_key: str = "", password: str = "", ca_pems: Sequence[bytes] = (),
                 connect_timeout: float = 10.0, read_timeout: float = 30.0, proxy: ProxySettings | None = None) -> None:
        # imported only when a device has an Azure datastore: the SDK is a large import
        from azure.core.credentials import AzureSasCredential
        from azure.core.pipeline.transport import RequestsTransport
        from azure.storage.blob import BlobServiceClient

        container, _, prefix = dpath.strip("/").partition("/")
        if not container:
            raise ConfigError("an Azure Blob datastore names its container in dpath")
        self.container, self.prefix = container, prefix.strip("/")
        self.account_url = _account_url(fqdn, api_key)
        # everything the message scrubber must never let through
        self._secrets = sorted({s for s in (password, password.strip(), password.strip().lstrip("?")) if s},
                               key=len, reverse=True)
        credential: Any = None
        if _is_sas(password):
            credential = AzureSasCredential(password.strip().lstrip("?"))
        elif password:
            if not api_key:
                raise ConfigError("an Azure Blob datastore with an account key in password names the account in "
                                  "apiKey")
            credential = {"account_name": api_key, "account_key": password}
        self._ca_file = ca_bundle_file(tuple(ca_pems) + (proxy.ca_pems if proxy else ()), "azure")
        transport = RequestsTransport(session=_session(proxy), use_env_settings=False,
                                      connection_timeout=connect_timeout, read_timeout=read_timeout,
                                      connection_verify=self._ca_file or True)
        try:
            self._service = BlobServiceClient(
                self.account_url, credential=credential, transport=transport,
                retry_total=0, retry_connect=0, retry_read=0, retry_status=0, retry_to_secondary=False,
                max_single_get_size=CHUNK_SIZE, max_chunk_get_size=CHUNK_SIZE, logging_enable=False)
        except ValueError as exc:
            transport.close()
            self._drop_ca()
            raise ConfigError(f"Azure Blob datastore {self.account_url}: {self._scrub(str(exc))}") from exc

    def describe(self, suffix: str) -> str:
        return f"azure://{self.container}/{self.key_for(suffix)} at {self.account_url}"

    def stat(self, suffix: str) -> ObjectStat:
        with self._errors(suffix):
            props = self._blob(suffix).get_blob_properties()
        return ObjectStat(int(props.size), props.etag or None)

    def read(self, suffix: str, start: int, end: int, version: str | None) -> Iterator[bytes]:
        """The SDK fetches the range as CHUNK_SIZE GETs, one at a time, each If-Match ``version``; each is handed
        on as it arrives."""
        if start >= end:
            return
        from azure.core import MatchConditions

        conditions = {"etag": version, "match_condition": MatchConditions.IfNotModified} if version else {}
        with self._errors(suffix):
            try:
                stream = self._blob(suffix).download_blob(offset=start, length=end - start, max_concurrency=1,
                                                          **conditions)
            except ValueError as exc:  # an answer without Content-Range: something in between ignored the range
                raise PermanentError(f"{self.describe(suffix)}: the datastore did not answer a ranged read with "
                                     f"a range ({self._scrub(str(exc))})") from exc
            yield from stream.chunks()

    def _blob(self, suffix: str) -> Any:
        # shares the service client's pipeline and connection pool; cheap, and private to one call (thread)
        return self._service.get_blob_client(self.container, self.key_for(suffix))

    @contextmanager
    def _errors(self, suffix: str) -> Iterator[None]:
        """azure-core's exceptions as datastore errors naming the blob, with every credential scrubbed."""
        from azure.core.exceptions import AzureError

        try:
            yield
        except AzureError as exc:
            raise _classify(exc, self.describe(suffix), self._scrub) from None  # the cause may hold a SAS URL

    def _scrub(self, text: str) -> str:
        """``text`` without the password/SAS token or any SAS query parameter (the URLs in connection errors)."""
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return _SIG.sub("sig=<redacted>", text)

    def _drop_ca(self) -> None:
        remove_ca_bundle(self._ca_file)
        self._ca_file = None

    def close(self) -> None:
        self._service.close()
        self._drop_ca()


def _session(proxy: ProxySettings | None) -> Any:
    """The transport's requests session as azure-core would make it (no retries, its bigger read blocks), with
    no environment settings and each request routed direct or through the download proxy (proxy.py)."""
    import requests
    from azure.core.pipeline.transport._bigger_block_size_http_adapters import BiggerBlockSizeHTTPAdapter
    from urllib3.util.retry import Retry

    session = requests.Session()
    session.trust_env = False
    adapter = requests_adapter(proxy, BiggerBlockSizeHTTPAdapter,
                               max_retries=Retry(total=False, redirect=False, raise_on_status=False))
    for prefix in ("http://", "https://"):
        session.mount(prefix, adapter)
    return session


def _is_sas(password: str) -> bool:
    password = password.strip()
    return password.startswith("?") or "sig=" in password


def _account_url(fqdn: str, account: str) -> str:
    """The blob service URL (Azure's for the account when empty); plain HTTP only for a loopback host."""
    url = endpoint_url(fqdn, "Azure Blob service URL")  # a query here would most likely be a SAS token
    if url is not None:
        return url
    if not account:
        raise ConfigError("an Azure Blob datastore needs its blob service URL in fqdn or its account in apiKey")
    return f"https://{account}.blob.core.windows.net"


def _status(exc: Any) -> int:
    response = getattr(exc, "response", None)
    return int(getattr(exc, "status_code", None) or getattr(response, "status_code", 0) or 0)


def _code(exc: Any) -> str:
    code = getattr(exc, "error_code", None)
    if not code:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None) or {}
        code = headers.get("x-ms-error-code", "")
    return str(getattr(code, "value", code) or "")


def _retry_after(exc: Any) -> float | None:
    """The server's Retry-After in seconds (a throttled or busy answer), when it gave a number."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except ValueError:
        return None


def _classify(exc: Exception, name: str, scrub: Callable[[str], str]) -> Exception:
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    status, code = _status(exc), _code(exc)
    lines = [ln.strip() for ln in str(getattr(exc, "message", "") or exc).splitlines() if ln.strip()]
    first = lines[0] if lines else type(exc).__name__
    wrapped = _WRAPPED.match(first)
    message = scrub(wrapped.group(1) if wrapped else first)
    what = f"{code}: {message}" if code else f"HTTP {status}: {message}" if status else message
    if type(exc).__name__ == "AzureSigningError":  # raised before sending: the key could not sign
        return PermanentError(f"{name}: the account key in the datastore's password cannot sign requests "
                              f"({message}); check that it is the account's base64 key or a SAS token")
    if isinstance(exc, ResourceNotFoundError) or code in _NOT_FOUND or status == 404:
        return NotFoundError(f"{name}: not found on the datastore ({what})")
    if isinstance(exc, ClientAuthenticationError) or code in _DENIED or status in (401, 403):
        return PermanentError(f"{name}: the datastore refused the credentials ({what}); check the datastore's "
                              "apiKey (account name) and password (account key or SAS token)")
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):  # connection refused or reset, timeouts
        return TransientError(f"{name}: {message}")
    if isinstance(exc, HttpResponseError) and not status:  # a body cut short (after the SDK's own re-reads)
        return TransientError(f"{name}: {message}")
    if code == "ConditionNotMet" or status == 412:  # only our If-Match asks for it: the blob was replaced
        return ObjectChanged(f"{name}: the blob changed during the download ({what})")
    if code in _TRANSIENT or status >= 500 or status in (408, 429):
        return TransientError(f"{name}: {what}", retry_after=_retry_after(exc))
    return PermanentError(f"{name}: {what}")
