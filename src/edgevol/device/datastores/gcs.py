"""Google Cloud Storage datastore (DsGoogleStorage): objects in a bucket, fetched with ranged GETs.

Field mapping, as EVE's downloader uses them (lf-edge/eve pkg/pillar/cmd/downloader/syncop.go):
``fqdn`` is the endpoint (Google's when empty; a GCS-compatible URL otherwise),
``dpath`` the bucket (an object-name prefix may follow its first ``/``),
``password`` the service-account JSON key (empty: anonymous access to a public
bucket), and the content tree's URL the object name under that prefix.

A fetch attempt is ``ranged.fetch_ranged`` over the object's metadata (its size
and generation) and ranged media GETs of that generation (``ifGenerationMatch``,
and the answer's ``x-goog-generation`` checked too, for servers that ignore the
parameter): a replaced object fails the read with ObjectChanged. Metadata goes
through google-cloud-storage; the bytes go through the same authorized
``requests`` session directly, because that is the one way to stream a range
without buffering it and without the transparent gzip decoding that would hand
us other bytes than the ones stored. The libraries' own retries are off: the
downloader's backoff owns them.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlsplit

from edgevol.model.desired import ProxySettings
from edgevol.netaddr import is_loopback_host

from .base import (
    ConfigError,
    DatastoreError,
    NotFoundError,
    PermanentError,
    TransientError,
)
from .http import ssl_context
from .proxy import requests_adapter
from .ranged import BucketStore, ObjectChanged, ObjectStat, skip_bytes
from .tls import ca_bundle_file, endpoint_url, remove_ca_bundle

__all__ = ["GOOGLE_ENDPOINT", "GcsDatastore"]

CHUNK_SIZE = 1 << 20
GOOGLE_ENDPOINT = "https://storage.googleapis.com"
READ_ONLY_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
POOL_SIZE = 64  # edgevol.download.parallel's upper bound: every parallel range keeps its connection
USER_AGENT = "edgevol"
_TRANSIENT_STATUS = frozenset({408, 425, 429})
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)\s*/\s*(\d+|\*)\s*$", re.IGNORECASE)
_KEY_FIELDS = ("client_email", "private_key", "token_uri")


class GcsDatastore(BucketStore):
    """A DsGoogleStorage datastore; raises ConfigError for an unusable endpoint, bucket, key or CA certificate."""

    # One requests session shared by the range threads: its urllib3 pool hands each thread its own connection,
    # every per-request setting (Range, timeout) travels with the call, and a token refresh racing another only
    # fetches a second valid token. GCS serves ranges of one object concurrently.
    parallel_ranges = True

    def __init__(self, fqdn: str, dpath: str, *, password: str = "", ca_pems: Sequence[bytes] = (),
                 connect_timeout: float = 10.0, read_timeout: float = 30.0, proxy: ProxySettings | None = None) -> None:
        # imported only when a device has a GCS datastore: they are large imports
        import requests
        from google.auth.transport.requests import AuthorizedSession, Request
        from google.cloud import storage

        bucket, _, prefix = dpath.strip("/").partition("/")
        if not bucket:
            raise ConfigError("a Google Cloud Storage datastore names its bucket in dpath")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        endpoint = endpoint_url(fqdn, "Google Cloud Storage endpoint")
        self.at = f" at {endpoint}" if endpoint else ""
        try:
            credentials, self.anonymous = _credentials(password)
            ssl_context(ca_pems)  # an unusable dsCertPEM, before anything is written
        except ConfigError as exc:
            raise ConfigError(f"gs://{bucket}{self.at}: {exc}") from None
        self._base = endpoint or GOOGLE_ENDPOINT
        self._timeout = (connect_timeout, read_timeout)
        self._ca_file = ca_bundle_file(tuple(ca_pems) + (proxy.ca_pems if proxy else ()), "gcs")
        verify: str | bool = self._ca_file or True
        try:
            # The token exchange gets a session of its own (google-auth's default one retries and trusts the
            # environment); both verify with the same bundle and route each request by its own host (the
            # token_uri may be elsewhere than the endpoint).
            self._token_session = _session(requests, verify, proxy)
            self._session = AuthorizedSession(credentials, auth_request=Request(self._token_session),
                                              refresh_timeout=read_timeout,
                                              # anonymous credentials cannot refresh: a 401 is the answer
                                              refresh_status_codes=() if self.anonymous else (401,))
            _configure(requests, self._session, verify, proxy)
            self._client = storage.Client(project=None, credentials=credentials, _http=self._session,
                                          client_options={"api_endpoint": self._base})
        except ValueError as exc:  # e.g. a key for another universe than the endpoint's
            self.close()
            raise ConfigError(f"gs://{bucket}{self.at}: unusable datastore settings: {exc}") from None
        except BaseException:
            self.close()
            raise
        self._bucket = self._client.bucket(bucket)

    def describe(self, suffix: str) -> str:
        return f"gs://{self.bucket}/{self.key_for(suffix)}{self.at}"

    def stat(self, suffix: str) -> ObjectStat:
        """Stored size and generation from the object's metadata (a reload, so GCS says which of bucket or object
        is missing)."""
        name = self._object_name(suffix)
        blob = self._bucket.blob(name)
        with self._errors(suffix):
            blob.reload(projection="noAcl", timeout=self._timeout, retry=None)
        if blob.size is None:
            raise TransientError(f"{self.describe(suffix)}: the datastore's metadata has no size")
        return ObjectStat(int(blob.size), str(blob.generation) if blob.generation else None)

    def read(self, suffix: str, start: int, end: int, version: str | None) -> Iterator[bytes]:
        """The stored bytes ``start..end`` of generation ``version``, streamed: ``Accept-Encoding: gzip`` stops GCS
        from decompressing a gzip-encoded object (which would also ignore the range), and the raw stream is read
        without decoding."""
        if start >= end:
            return
        name = self._object_name(suffix)
        url = f"{self._base}/download/storage/v1/b/{quote(self.bucket, safe='')}/o/{quote(name, safe='')}?alt=media"
        if version:
            url += f"&ifGenerationMatch={quote(version, safe='')}"
        with self._errors(suffix):
            resp = self._session.get(url, headers={"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "gzip"},
                                     stream=True, timeout=self._timeout)
            try:
                served = resp.headers.get("x-goog-generation")
                if resp.status_code == 412 or (version and served and resp.status_code in (200, 206)
                                               and served != version):
                    raise ObjectChanged(f"{self.describe(suffix)}: the object changed during the download "
                                        f"(generation {version} is now {served or 'another'})")
                if resp.status_code not in (200, 206):
                    raise _status_error(resp.status_code, _message(resp), self.describe(suffix), self.anonymous,
                                        _retry_after(resp.headers.get("Retry-After")))
                skip = 0
                if resp.status_code == 206:
                    got = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                    if got is None or int(got.group(1)) != start:
                        raise TransientError(f"{self.describe(suffix)}: asked for bytes from {start}, the datastore "
                                             f"answered Content-Range {resp.headers.get('Content-Range')!r}")
                else:
                    skip = start  # a store that ignored the range sent it all
                yield from skip_bytes(resp.raw.stream(CHUNK_SIZE, decode_content=False), skip)
            finally:
                resp.close()

    def _object_name(self, suffix: str) -> str:
        name = self.key_for(suffix)
        if not name or name.endswith("/"):
            raise ConfigError(f"{self.describe(suffix)}: the content tree's URL names no object")
        return name

    @contextmanager
    def _errors(self, suffix: str) -> Iterator[None]:
        """The google libraries', requests' and urllib3's exceptions as datastore errors naming the object."""
        import requests
        import urllib3
        from google.api_core import exceptions as api
        from google.auth import exceptions as auth

        name = self.describe(suffix)
        try:
            yield
        except DatastoreError:
            raise
        except api.GoogleAPICallError as exc:
            response = getattr(exc, "response", None)
            headers = getattr(response, "headers", None) or {}
            # the library's message starts with the request line ("GET <url>: "); the name says it already
            message = re.sub(r"^[A-Z]+ \S+: ", "", str(exc.message))
            raise _status_error(int(exc.code or 0), message, name, self.anonymous,
                                _retry_after(headers.get("Retry-After"))) from exc
        except auth.RefreshError as exc:  # the token endpoint turned the key down (or failed)
            detail = _short(exc.args[0] if exc.args else type(exc).__name__)
            if exc.retryable:
                raise TransientError(f"{name}: the token exchange failed ({detail})") from exc
            raise PermanentError(f"{name}: the datastore refused the credentials (token exchange: {detail}); check "
                                 "the datastore's password (service-account JSON key)") from exc
        except auth.TransportError as exc:  # the token endpoint could not be reached
            raise _network_error(name, exc, "the token endpoint: ") from exc
        except auth.GoogleAuthError as exc:
            raise PermanentError(f"{name}: the credentials are unusable ({type(exc).__name__}); check the "
                                 "datastore's password (service-account JSON key)") from exc
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            # connection refused or reset, timeouts, a body cut short; OSError covers http.client's own
            raise _network_error(name, exc) from exc

    def close(self) -> None:
        for attr in ("_client", "_session", "_token_session"):
            obj = self.__dict__.pop(attr, None)
            if obj is not None:
                obj.close()
        remove_ca_bundle(self.__dict__.get("_ca_file"))
        self._ca_file = None


def _credentials(password: str) -> tuple[Any, bool]:
    """Credentials from the service-account JSON key, or anonymous ones for an empty password.

    Messages name what is wrong with the key, never its contents; ``from None`` keeps a parser's
    exception (which may quote the text) out of any traceback.
    """
    from google.auth.credentials import AnonymousCredentials
    from google.oauth2 import service_account

    if not password.strip():
        return AnonymousCredentials(), True
    what = "the datastore's password is not a usable service-account JSON key"
    try:
        info = json.loads(password)
    except ValueError:
        raise ConfigError(f"{what}: it is not valid JSON") from None
    if not isinstance(info, dict):
        raise ConfigError(f"{what}: it is not a JSON object")
    if info.get("type") != "service_account":
        raise ConfigError(f'{what}: its "type" is not "service_account"')
    missing = [k for k in _KEY_FIELDS if not isinstance(info.get(k), str) or not info[k]]
    if missing:
        raise ConfigError(f"{what}: it lacks {', '.join(missing)}")
    token = urlsplit(info["token_uri"])
    if token.scheme != "https" and not (token.scheme == "http" and is_loopback_host(token.hostname or "")):
        raise ConfigError(f"{what}: its token_uri is not an https URL")
    try:
        creds = service_account.Credentials.from_service_account_info(info, scopes=[READ_ONLY_SCOPE])
    except (ValueError, TypeError, KeyError, IndexError):
        raise ConfigError(f"{what}: its private_key cannot be loaded") from None
    return creds, False


def _session(requests: Any, verify: str | bool, proxy: ProxySettings | None) -> Any:
    session = requests.Session()
    _configure(requests, session, verify, proxy)
    return session


def _configure(requests: Any, session: Any, verify: str | bool, proxy: ProxySettings | None) -> None:
    """No retries, no environment (proxies, netrc, CA variables): the datastore config and the agent's proxy
    settings are the only sources of truth."""
    session.trust_env = False
    session.verify = verify
    session.headers["User-Agent"] = USER_AGENT
    adapter = requests_adapter(proxy, pool_connections=4, pool_maxsize=POOL_SIZE, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)


def _status_error(status: int, message: str, name: str, anonymous: bool, retry_after: float | None) -> Exception:
    detail = f"{status}: {_short(message)}" if message else str(status)
    if status in (404, 410):
        return NotFoundError(f"{name}: not found on the datastore ({detail})")
    if status in (401, 403):
        hint = ("; it has none, so access was anonymous, which only a public bucket allows" if anonymous else "")
        return PermanentError(f"{name}: the datastore refused the credentials ({detail}); check the datastore's "
                              f"password (service-account JSON key{hint})")
    if status in _TRANSIENT_STATUS or status >= 500 or status == 416:  # 416: the object changed since its size
        return TransientError(f"{name}: {detail}", retry_after=retry_after)
    return PermanentError(f"{name}: the datastore answered {detail}")


def _network_error(name: str, exc: BaseException, where: str = "") -> DatastoreError:
    verify = _cert_verify_error(exc)
    if verify is not None:
        return PermanentError(f"{name}: {where}TLS certificate verification failed: {verify}")
    return TransientError(f"{name}: {where}{type(exc).__name__}: {_short(str(exc), 300)}")


def _cert_verify_error(exc: BaseException) -> str | None:
    """The verification reason if ``exc`` was caused by a rejected certificate (urllib3 nests it in reasons)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur.verify_message or "certificate rejected"
        todo.extend(e for e in (cur.__cause__, cur.__context__, getattr(cur, "reason", None), *cur.args)
                    if isinstance(e, BaseException))
    return "certificate rejected" if "CERTIFICATE_VERIFY_FAILED" in str(exc) else None


def _message(resp: Any) -> str:
    """GCS's JSON error message, else the start of the body; read only from a small error answer."""
    try:
        text = resp.raw.read(4096, decode_content=True).decode("utf-8", "replace")
    except Exception:  # the error answer itself failed: the status says enough
        return resp.reason or ""
    try:
        return str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return text.strip() or (resp.reason or "")


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _short(text: Any, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
