"""OCI distribution (registry API v2) client for CONTAINER content trees.

Built on httpx directly rather than a registry library because blobs must
stream into edgevol's own ingest with the same one-attempt semantics as the
HTTP datastore (Range resume, size caps, transient/permanent errors); the
byte-moving part is :class:`~.http.FetchAttempt`, shared with that datastore.

Auth follows the Docker token spec: every request starts anonymous; a 401
names the scheme. ``Bearer realm=...,service=...,scope=...`` means "get a
token from the realm" (with basic credentials if configured), cached per
scope until it expires; ``Basic`` means "send the credentials". A second 401
is final. Credentials never appear in messages, and httpx drops the
Authorization header when a blob redirect leaves the registry's origin.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from edgevol.model.desired import ProxySettings

from .base import (
    BytesSink,
    ConfigError,
    DatastoreError,
    ManifestDigestMismatch,
    NotFoundError,
    PermanentError,
    ProgressFn,
    Sink,
    TransientError,
)
from .http import (
    CHUNK_SIZE,
    USER_AGENT,
    FetchAttempt,
    ProxyRoutingTransport,
    RestartFromZero,
    refuse_downgrade,
    retry_after_seconds,
)
from .oci_manifest import (
    MANIFEST_MEDIA_TYPES,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_DOCKER_MANIFEST_LIST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    Descriptor,
    sniff_media_type,
)
from .oci_refs import DIGEST_RE, ImageRef, is_loopback_host, validate_digest, validate_repository

__all__ = [
    "MANIFEST_ACCEPT",
    "MAX_MANIFEST_SIZE",
    "AuthChallenge",
    "ManifestDigestMismatch",
    "RegistryClient",
    "parse_www_authenticate",
]

MAX_MANIFEST_SIZE = 4 << 20
MANIFEST_ACCEPT = ", ".join(
    [MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST_LIST, MEDIA_DOCKER_MANIFEST]
)
_ERROR_BODY_LIMIT = 64 << 10
_TOKEN_BODY_LIMIT = 1 << 20
_DEFAULT_TOKEN_LIFETIME = 60.0  # token spec: assume 60 s when expires_in is absent
_TOKEN_EXPIRY_MARGIN = 5.0
_TRANSIENT_STATUS = frozenset({408, 425, 429})
_AUTH_SCHEME = re.compile(r"\s*,?\s*([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)(?=\s|$|,)")
_AUTH_PARAM = re.compile(r'\s*([A-Za-z0-9!#$%&\'*+.^_`|~-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]*)\s*(?:,|$)')


@dataclass(frozen=True)
class AuthChallenge:
    """One challenge of a WWW-Authenticate header; ``params`` keys are lowercase."""

    scheme: str  # lowercase: "bearer", "basic", ...
    params: Mapping[str, str]


def parse_www_authenticate(values: Sequence[str]) -> list[AuthChallenge]:
    """Challenges from WWW-Authenticate header values (RFC 7235 auth-params only)."""
    out: list[AuthChallenge] = []
    for value in values:
        pos = 0
        while pos < len(value):
            match = _AUTH_SCHEME.match(value, pos)
            if not match:
                break
            pos = match.end()
            params: dict[str, str] = {}
            while (param := _AUTH_PARAM.match(value, pos)) is not None:
                raw = param.group(2)
                if raw.startswith('"'):
                    raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
                params[param.group(1).lower()] = raw
                pos = param.end()
            out.append(AuthChallenge(match.group(1).lower(), params))
    return out


class RegistryClient:
    """A client for one registry host; thread-safe, holds a connection pool and token cache."""

    def __init__(
        self,
        registry_host: str,
        scheme: str = "https",
        *,
        api_key: str = "",
        password: str = "",
        ca_pems: Sequence[bytes] = (),
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        proxy: ProxySettings | None = None,
    ) -> None:
        """Raise ConfigError for plain HTTP to a non-loopback host or an unusable CA."""
        if scheme not in ("https", "http"):
            raise ConfigError(f"unsupported registry scheme {scheme!r}")
        try:
            host = httpx.URL(f"{scheme}://{registry_host}/").host
        except httpx.InvalidURL as exc:
            raise ConfigError(f"invalid registry address {registry_host!r}: {exc}") from exc
        if not host:
            raise ConfigError("registry address has no host")
        if scheme == "http" and not is_loopback_host(host):
            raise ConfigError(f"plain http is only allowed for a loopback registry, not {host!r}")
        self._base = f"{scheme}://{registry_host}"
        self._host = host
        self._basic: str | None = None
        self._account = api_key
        if api_key or password:
            pair = f"{api_key}:{password}".encode()
            self._basic = "Basic " + base64.b64encode(pair).decode("ascii")
        self._lock = threading.Lock()
        self._mode: str | None = None  # None (anonymous), "basic" or "bearer"
        self._bearer: AuthChallenge | None = None
        self._tokens: dict[str, tuple[str, float]] = {}
        self._client = httpx.Client(
            # Every request (manifests, blobs, redirects, the token realm) is routed by its own URL.
            transport=ProxyRoutingTransport(proxy, ca_pems),
            follow_redirects=True,
            timeout=httpx.Timeout(
                connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
            ),
            # The datastore config and the agent's proxy settings are the only sources: no netrc, no env.
            trust_env=False,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            event_hooks={"response": [refuse_downgrade]},
        )

    @classmethod
    def for_ref(cls, ref: ImageRef, **kwargs: object) -> RegistryClient:
        return cls(ref.registry_host, ref.scheme, **kwargs)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        auth = "basic" if self._basic else "none"
        return f"RegistryClient({self._base}, credentials={auth})"

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    @property
    def base_url(self) -> str:
        return self._base

    # -- public operations -------------------------------------------------

    def resolve(self, ref: ImageRef) -> Descriptor:
        """The descriptor a tag (or digest) points at now; verifies a pinned digest."""
        validate_repository(ref.repository)
        url = self._url(ref.repository, "manifests", ref.reference)
        scope = _scope(ref.repository, push=False)
        headers = {"Accept": MANIFEST_ACCEPT}
        desc: Descriptor | None = None
        try:
            with self._open("HEAD", url, scope, headers) as resp:
                status = resp.status_code
                if status == 200:
                    desc = _descriptor_from_head(resp)
                elif status in (404, 410) or status in _TRANSIENT_STATUS or status >= 500:
                    raise self._status_error(resp, url, f"manifest {ref}")
                # anything else (405, 400, ...): the GET below gives the real answer
        except httpx.HTTPError as exc:
            raise _transport_error(url, exc) from exc
        if desc is None:
            media_type, body = self._get_manifest(url, ref.repository, MAX_MANIFEST_SIZE)
            desc = Descriptor(media_type, _sha256(body), len(body))
        if ref.digest and desc.digest != ref.digest:
            raise PermanentError(
                f"{ref}: the registry answered with manifest {desc.digest}, "
                f"not the pinned {ref.digest}"
            )
        return desc

    def fetch_manifest(
        self, repository: str, digest: str, *, max_size: int = MAX_MANIFEST_SIZE
    ) -> tuple[str, bytes]:
        """``(media_type, bytes)`` of the manifest ``digest``, verified against it."""
        validate_repository(repository)
        validate_digest(digest)
        url = self._url(repository, "manifests", digest)
        media_type, body = self._get_manifest(url, repository, max_size)
        actual = _sha256(body)
        if actual != digest:
            raise ManifestDigestMismatch(f"{url}: manifest content has digest {actual}, expected {digest}")
        return media_type, body

    def fetch_blob(
        self,
        repository: str,
        digest: str,
        sink: Sink,
        *,
        max_size: int | None = None,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        expected_size: int | None = None,
    ) -> None:
        """ONE attempt to deliver blob bytes ``sink.offset..end`` (resuming with Range).

        Same contract as ``Datastore.fetch``; the caller verifies the digest. ``expected_size``
        is the descriptor's size: an answer announcing another size is a TransientError.
        """
        validate_repository(repository)
        validate_digest(digest)
        url = self._url(repository, "blobs", digest)
        try:
            self._get_blob(url, repository, digest, sink, max_size, progress, cancel, expected_size)
        except RestartFromZero:  # the server could not continue the partial, which is gone now
            self._get_blob(url, repository, digest, sink, max_size, progress, cancel, expected_size)

    def _get_blob(self, url: str, repository: str, digest: str, sink: Sink, max_size: int | None,
                  progress: ProgressFn | None, cancel: threading.Event | None, expected_size: int | None) -> None:
        # Not conditional: the digest in the URL pins the content, and an If-Range would follow a redirect
        # to the registry's storage, whose own ETag would never match it.
        attempt = FetchAttempt(url, sink, max_size, progress, cancel, self._basic is not None, expected_size)
        attempt.check_cancel()
        headers = attempt.request_headers()
        try:
            with self._open("GET", url, _scope(repository, push=False), headers) as resp:
                if resp.status_code not in (200, 206, 416):
                    raise self._status_error(resp, url, f"blob {digest}")
                attempt.receive(resp)
        except httpx.InvalidURL as exc:
            raise PermanentError(f"{url}: invalid URL ({exc})") from exc
        except httpx.HTTPError as exc:
            raise attempt.classify(exc) from exc

    def request(
        self,
        method: str,
        repository: str,
        path_or_url: str,
        *,
        push: bool = False,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """An authenticated, fully read request (for pushing: tools, tests, demo).

        ``path_or_url`` is either ``/v2/...`` or an absolute URL (an upload
        Location). Non-2xx answers are returned, not raised; transport
        failures raise TransientError/PermanentError.
        """
        validate_repository(repository)
        url = str(httpx.URL(self._base + "/").join(path_or_url))
        try:
            with self._open(
                method, url, _scope(repository, push=push), dict(headers or {}), content, params
            ) as resp:
                resp.read()
                return resp
        except httpx.HTTPError as exc:
            raise _transport_error(url, exc) from exc

    # -- internals ---------------------------------------------------------

    def _url(self, repository: str, kind: str, reference: str) -> str:
        return f"{self._base}/v2/{repository}/{kind}/{reference}"

    def _get_manifest(self, url: str, repository: str, max_size: int) -> tuple[str, bytes]:
        try:
            with self._open("GET", url, _scope(repository, push=False), {"Accept": MANIFEST_ACCEPT}) as resp:
                if resp.status_code != 200:
                    raise self._status_error(resp, url, "manifest")
                body = _read_capped(resp, url, max_size, "manifest")
                header_type = _content_type(resp)
        except httpx.HTTPError as exc:
            raise _transport_error(url, exc) from exc
        media_type = header_type if header_type in MANIFEST_MEDIA_TYPES else sniff_media_type(body)
        if media_type is None:
            raise PermanentError(
                f"{url}: unsupported manifest type {header_type!r} "
                "(expected an OCI or Docker v2 image manifest or index)"
            )
        return media_type, body

    @contextmanager
    def _open(
        self,
        method: str,
        url: str,
        scope: str,
        headers: Mapping[str, str],
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Iterator[httpx.Response]:
        """A streamed response, after at most one round of authentication."""
        target = httpx.URL(url)
        if params:
            # httpx's params= would replace the query (an upload Location's _state).
            target = target.copy_merge_params(dict(params))
        for attempt in range(2):
            request_headers = dict(headers)
            authorization = self._authorization(scope)
            if authorization:
                request_headers["Authorization"] = authorization
            with self._client.stream(method, target, headers=request_headers, content=content) as resp:
                if resp.status_code == 401 and resp.url.host == self._host:
                    if attempt == 0:
                        challenges = parse_www_authenticate(resp.headers.get_list("www-authenticate"))
                        resp.close()
                        self._answer_challenge(url, challenges, scope)
                        continue
                    raise self._auth_failed(url)
                yield resp
                return

    def _authorization(self, scope: str) -> str | None:
        with self._lock:
            mode, challenge = self._mode, self._bearer
            cached = self._tokens.get(scope)
        if mode == "basic":
            return self._basic
        if mode == "bearer" and challenge is not None:
            if cached is not None and cached[1] > time.monotonic():
                return f"Bearer {cached[0]}"
            # The registry speaks tokens: fetch one now instead of earning another 401.
            return f"Bearer {self._fetch_token(challenge, scope)}"
        return None

    def _answer_challenge(self, url: str, challenges: list[AuthChallenge], scope: str) -> None:
        bearer = next((c for c in challenges if c.scheme == "bearer" and c.params.get("realm")), None)
        if bearer is not None:
            with self._lock:
                self._tokens.pop(scope, None)
            self._fetch_token(bearer, scope, extra_scope=bearer.params.get("scope"))
            with self._lock:
                self._mode, self._bearer = "bearer", bearer
            return
        if any(c.scheme == "basic" for c in challenges):
            if self._basic is None:
                raise PermanentError(f"{url}: HTTP 401: the registry requires credentials (apiKey/password)")
            with self._lock:
                self._mode = "basic"
            return
        offered = ", ".join(sorted({c.scheme for c in challenges})) or "none"
        raise PermanentError(f"{url}: HTTP 401 with no usable authentication challenge (offered: {offered})")

    def _fetch_token(self, challenge: AuthChallenge, scope: str, extra_scope: str | None = None) -> str:
        """A bearer token for ``scope`` from the challenge's realm, cached until it expires.

        ``extra_scope`` is what the 401 itself asked for, if it differs from ours.
        """
        realm = challenge.params["realm"]
        try:
            realm_url = httpx.URL(realm)
        except httpx.InvalidURL as exc:
            raise PermanentError(f"registry token realm {realm!r} is not a valid URL") from exc
        if realm_url.scheme != "https" and not (
            realm_url.scheme == "http" and is_loopback_host(realm_url.host)
        ):
            raise PermanentError(
                f"registry token realm {realm!r} is not https; refusing to send credentials there"
            )
        scopes = [scope] + ([extra_scope] if extra_scope and extra_scope != scope else [])
        params: dict[str, str | list[str]] = {"scope": scopes}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        headers = {}
        if self._basic is not None:
            headers["Authorization"] = self._basic
            if self._account:
                params["account"] = self._account
        label = f"{realm_url.scheme}://{realm_url.netloc.decode('ascii', 'replace')}{realm_url.path}"
        started = time.monotonic()
        try:
            token_url = realm_url.copy_merge_params(params)
            with self._client.stream("GET", token_url, headers=headers) as resp:
                status = resp.status_code
                if status in (401, 403):
                    raise PermanentError(
                        f"{label}: authentication failed (HTTP {status} from the token service): "
                        + (
                            "it rejected the configured credentials"
                            if self._basic
                            else "it requires credentials (apiKey/password)"
                        )
                    )
                if status != 200:
                    raise self._status_error(resp, label, "token")
                body = _read_capped(resp, label, _TOKEN_BODY_LIMIT, "token response")
        except httpx.HTTPError as exc:
            raise _transport_error(label, exc) from exc
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise PermanentError(f"{label}: token response is not JSON") from exc
        token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise PermanentError(f"{label}: token response has no token")
        lifetime = doc.get("expires_in")
        if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool) or lifetime <= 0:
            lifetime = _DEFAULT_TOKEN_LIFETIME
        expires = started + max(float(lifetime) - _TOKEN_EXPIRY_MARGIN, 1.0)
        with self._lock:
            self._tokens[scope] = (token, expires)
        return token

    def _auth_failed(self, url: str) -> PermanentError:
        hint = (
            "the registry rejected the configured credentials"
            if self._basic
            else "the registry requires credentials (apiKey/password)"
        )
        return PermanentError(f"{url}: authentication failed (HTTP 401): {hint}")

    def _status_error(self, resp: httpx.Response, url: str, what: str) -> DatastoreError:
        status = resp.status_code
        codes = _registry_error_codes(resp)
        detail = f" [{codes}]" if codes else ""
        label = f"{url}: HTTP {status} {resp.reason_phrase}".rstrip() + detail
        if status in (404, 410):
            return NotFoundError(f"{label} ({what} not found in the registry)")
        if status in (401, 403):
            hint = "access denied with the configured credentials" if self._basic else "access denied"
            return PermanentError(f"{label} ({hint})")
        if status in _TRANSIENT_STATUS or 500 <= status <= 599:
            return TransientError(label, retry_after=retry_after_seconds(resp))
        return PermanentError(f"{label} (unexpected answer for {what})")


def _scope(repository: str, *, push: bool) -> str:
    return f"repository:{repository}:{'pull,push' if push else 'pull'}"


def _descriptor_from_head(resp: httpx.Response) -> Descriptor | None:
    """The descriptor from HEAD headers, or None if the GET must fill gaps."""
    media_type = _content_type(resp)
    digest = resp.headers.get("docker-content-digest", "").strip()
    length = resp.headers.get("content-length", "").strip()
    if media_type not in MANIFEST_MEDIA_TYPES or not DIGEST_RE.match(digest) or not length.isdigit():
        return None
    return Descriptor(media_type, digest, int(length))


def _content_type(resp: httpx.Response) -> str:
    return resp.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _read_capped(resp: httpx.Response, url: str, limit: int, what: str) -> bytes:
    length = resp.headers.get("content-length", "").strip()
    if length.isdigit() and int(length) > limit:
        raise PermanentError(f"{url}: {what} is {int(length)} bytes, more than the {limit} allowed")
    sink = BytesSink()
    for chunk in resp.iter_raw(CHUNK_SIZE):
        if sink.offset + len(chunk) > limit:
            raise PermanentError(f"{url}: {what} is larger than the {limit} bytes allowed")
        sink.write(chunk)
    if length.isdigit() and sink.offset < int(length):
        raise TransientError(f"{url}: {what} cut short at {sink.offset} of {length} bytes")
    return sink.getvalue()


def _registry_error_codes(resp: httpx.Response) -> str:
    """``CODE: message`` pairs from a registry error body (best effort, bounded)."""
    if resp.request.method == "HEAD":
        return ""
    try:
        body = _read_capped(resp, "", _ERROR_BODY_LIMIT, "error body")
        doc = json.loads(body)
    except (DatastoreError, httpx.HTTPError, ValueError):
        return ""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return ""
    parts = []
    for err in errors[:5]:
        if isinstance(err, dict) and isinstance(err.get("code"), str):
            message = err.get("message")
            parts.append(f"{err['code']}: {message}" if isinstance(message, str) else err["code"])
    return "; ".join(parts)[:500]


def _transport_error(url: str, exc: httpx.HTTPError) -> DatastoreError:
    """Classify a transport failure the way the HTTP datastore does."""
    if isinstance(exc, httpx.InvalidURL):
        return PermanentError(f"{url}: invalid URL ({exc})")
    return FetchAttempt(url, BytesSink(), None, None, None, False).classify(exc)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()

