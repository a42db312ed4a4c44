"""HTTP(S) datastore: plain files behind a URL, fetched with resumable Range requests.

One ``fetch`` is one attempt. It resumes from ``sink.offset`` with a Range
request made conditional by ``If-Range`` (the validator the sink kept from the
answer its bytes came from), so a file replaced on the server comes whole
instead of being spliced onto the old one's bytes; it falls back to a full
download when the server cannot resume, enforces ``maxSizeBytes`` before and
while reading, and classifies every failure as transient (wait and retry) or
permanent (needs a config or server change).
"""

from __future__ import annotations

import email.utils
import re
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import quote, unquote

import httpx

from edgevol.log import get_logger

from edgevol.model.desired import ProxySettings

from . import proxy as proxies
from .base import Cancelled, ConfigError, NotFoundError, PermanentError, ProgressFn, Sink, TransientError

__all__ = [
    "CHUNK_SIZE",
    "FetchAttempt",
    "HttpDatastore",
    "ProxyRoutingTransport",
    "RestartFromZero",
    "USER_AGENT",
    "refuse_downgrade",
    "response_validator",
    "retry_after_seconds",
    "ssl_context",
]

CHUNK_SIZE = 1 << 20
PROGRESS_INTERVAL = 0.2
USER_AGENT = "edgevol"

# RFC 3986 pchar minus '%': every other byte is percent-encoded, so a suffix is
# always taken literally (never as a query, fragment or pre-encoded text).
_PCHAR_SAFE = "-._~!$&'()*+,;=:@"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)\s*/\s*(\d+|\*)\s*$", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TRANSIENT_STATUS = frozenset({408, 425, 429})

log = get_logger("edgevol.datastores")


class RestartFromZero(TransientError):
    """The attempt threw the partial away (the file changed, or the server cannot continue it).

    A TransientError, so a caller that does not handle it retries later; the
    HTTP datastore and the registry fetch again from byte 0 in the same attempt,
    as they do after a 200 to a ranged request.
    """


class HttpDatastore:
    """A datastore of type DsHttp / DsHttps."""

    def __init__(
        self,
        fqdn: str,
        dpath: str = "",
        *,
        secure_default: bool,
        api_key: str = "",
        password: str = "",
        ca_pems: Sequence[bytes] = (),
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        proxy: ProxySettings | None = None,
    ) -> None:
        """Raise ConfigError (a ValueError) for an unusable address or CA certificate."""
        self._scheme, self._netloc, base_segments = _split_base(fqdn, secure_default)
        self._prefix = base_segments + _segments(dpath, "dpath")
        self._has_credentials = bool(api_key or password)
        self._client = httpx.Client(
            transport=ProxyRoutingTransport(proxy, ca_pems),
            auth=httpx.BasicAuth(api_key, password) if self._has_credentials else None,
            follow_redirects=True,
            timeout=httpx.Timeout(
                connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
            ),
            # No netrc, no proxy or CA settings from the environment: the datastore config and
            # the agent's proxy settings (read from its environment once) are the only sources.
            trust_env=False,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            event_hooks={"response": [refuse_downgrade]},
        )

    def __repr__(self) -> str:
        auth = "basic" if self._has_credentials else "none"
        return f"HttpDatastore({self._scheme}://{self._netloc}, auth={auth})"

    def __enter__(self) -> HttpDatastore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def url_for(self, suffix: str) -> str:
        """fqdn + dpath + suffix with single slashes; each segment taken literally.

        Raises ConfigError (a ValueError) for '.', '..', backslashes or control
        characters, even though callers validate suffixes first.
        """
        segments = self._prefix + _segments(suffix, "URL suffix")
        path = "/".join(quote(s, safe=_PCHAR_SAFE) for s in segments)
        return f"{self._scheme}://{self._netloc}/{path}"

    def fetch(
        self,
        suffix: str,
        sink: Sink,
        *,
        max_size: int | None = None,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        """One attempt to deliver ``suffix`` from byte ``sink.offset`` to the end."""
        url = self.url_for(suffix)
        try:
            self._get(url, sink, max_size, progress, cancel)
        except RestartFromZero as exc:
            log.info("starting over", reason=str(exc))
            self._get(url, sink, max_size, progress, cancel)  # from byte 0 now, so it cannot restart again

    def _get(self, url: str, sink: Sink, max_size: int | None, progress: ProgressFn | None,
             cancel: threading.Event | None) -> None:
        attempt = FetchAttempt(url, sink, max_size, progress, cancel, self._has_credentials, conditional=True)
        attempt.check_cancel()
        try:
            with self._client.stream("GET", url, headers=attempt.request_headers()) as response:
                attempt.receive(response)
        except httpx.InvalidURL as exc:
            raise PermanentError(f"{url}: invalid URL ({exc})") from exc
        except httpx.HTTPError as exc:
            raise attempt.classify(exc) from exc


@dataclass
class _ContentRange:
    start: int | None  # None for the unsatisfied form "bytes */TOTAL"
    end: int | None
    total: int | None  # None for "*"


@dataclass
class FetchAttempt:
    """The state of one fetch, so the datastore object itself stays stateless."""

    url: str
    sink: Sink
    max_size: int | None
    progress: ProgressFn | None
    cancel: threading.Event | None
    has_credentials: bool
    # The content's own size when it is known independently (a registry descriptor): an answer
    # announcing another size is the server's fault, worth another attempt, not a size-limit breach.
    expected_size: int | None = None
    # Whether the content can change under its URL, so a resume must be conditional (If-Range) and each
    # answer's validator is kept with the bytes; not for a registry blob, which its URL's digest pins.
    conditional: bool = False
    received: int = 0
    total: int | None = None
    start: int = field(init=False, default=0)
    sent_validator: str | None = field(init=False, default=None)  # the If-Range this attempt sent
    _last_progress: float = 0.0

    def __post_init__(self) -> None:
        self.start = self.sink.offset  # where this attempt resumes

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(f"{self.url}: download cancelled")

    def request_headers(self) -> dict[str, str]:
        """``Range`` from the sink's offset and, when it kept a validator, ``If-Range``: a server whose file
        changed since then answers 200 with the whole new file instead of a piece of it."""
        if self.start == 0:
            return {}
        headers = {"Range": f"bytes={self.start}-"}
        if self.conditional and self.sink.validator:
            self.sent_validator = self.sink.validator
            headers["If-Range"] = self.sent_validator
        return headers

    def receive(self, response: httpx.Response) -> None:
        status = response.status_code
        if status == 200:
            self._accept_full(response)
        elif status == 206:
            self._accept_partial(response)
        elif status == 416:
            self._range_not_satisfiable(response)
            return
        else:
            raise self._status_error(response)
        self._stream(response)

    def _accept_full(self, response: httpx.Response) -> None:
        length = _content_length(response)
        self._check_announced(length)
        if self.sink.offset > 0:
            # The server ignored our Range header, or If-Range said the file changed: start over with this body.
            self.sink.reset()
        self.total = length
        self._record(response_validator(response))

    def _accept_partial(self, response: httpx.Response) -> None:
        cr = _parse_content_range(response.headers.get("content-range"))
        if cr is None or cr.start != self.start:
            got = "no valid Content-Range" if cr is None else f"a range starting at {cr.start}"
            if self.start > 0:
                self.sink.reset()
                raise RestartFromZero(
                    f"{self.url}: asked for bytes from {self.start}, server sent {got}; "
                    "restarting from the beginning"
                )
            raise PermanentError(f"{self.url}: unexpected partial response with {got}")
        assert cr.end is not None
        self._check_unchanged(response)
        self.total = cr.total
        self._check_announced(cr.total if cr.total is not None else cr.end + 1)
        current = response_validator(response)
        self._record(current if current is not None else self.sent_validator)

    def _range_not_satisfiable(self, response: httpx.Response) -> None:
        cr = _parse_content_range(response.headers.get("content-range"))
        total = cr.total if cr is not None else None
        if self.start == 0:
            raise PermanentError(f"{self.url}: HTTP 416 for a request without a range")
        self._check_unchanged(response)
        if total is not None and total == self.start:
            self.total = total
            self._report(force=True)  # we already hold every byte; the commit's digest check has the last word
            return
        self.sink.reset()
        size = "unknown size" if total is None else f"size {total}"
        raise RestartFromZero(
            f"{self.url}: server cannot resume from byte {self.start} ({size}); "
            "restarting from the beginning"
        )

    def _check_unchanged(self, response: httpx.Response) -> None:
        """A ranged answer naming another version than our If-Range did comes from a server that ignored
        If-Range for a file that changed: the bytes held are the old file's, so they go."""
        if self.sent_validator is None:
            return
        now = _validator_like(self.sent_validator, response)
        if now is None or _same_version(self.sent_validator, now):
            return  # unchanged, or the server does not say: the digest check at commit still holds
        self.sink.reset()
        raise RestartFromZero(
            f"{self.url}: the file changed on the server after byte {self.start} was received "
            f"({self.sent_validator} is now {now}) and the server ignored If-Range; restarting from the beginning"
        )

    def _record(self, validator: str | None) -> None:
        """Keep the validator of the answer the sink's bytes now come from (None: it gave none usable)."""
        if self.conditional:
            self.sink.set_validator(validator)

    def _check_announced(self, announced: int | None) -> None:
        if self.expected_size is not None and announced is not None and announced != self.expected_size:
            raise TransientError(
                f"{self.url}: server announces {announced} bytes for content of {self.expected_size} bytes"
            )
        if self.max_size is not None and announced is not None and announced > self.max_size:
            raise PermanentError(
                f"{self.url}: server announces {announced} bytes, "
                f"more than maxSizeBytes {self.max_size}"
            )

    def _stream(self, response: httpx.Response) -> None:
        self._report(force=True)
        # Take chunks as the transport delivers them: re-chunking into fixed
        # sizes costs a copy of every byte (measured: ~0.7 s per GiB).
        for chunk in response.iter_raw():
            self.check_cancel()
            if self.max_size is not None and self.sink.offset + len(chunk) > self.max_size:
                raise PermanentError(
                    f"{self.url}: content is larger than maxSizeBytes {self.max_size}; "
                    f"stopped after {self.sink.offset} bytes"
                )
            self.sink.write(chunk)
            self.received += len(chunk)
            self._report(force=False)
        if self.total is not None and self.sink.offset < self.total:
            # A partial 206 (server capped the range): keep what we have, resume later.
            raise TransientError(
                f"{self.url}: server sent {self.received} bytes, stopping at byte "
                f"{self.sink.offset} of {self.total}"
            )
        self._report(force=True)

    def _report(self, *, force: bool) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if force or now - self._last_progress >= PROGRESS_INTERVAL:
            self._last_progress = now
            self.progress(self.sink.offset, self.total)

    def _status_error(self, response: httpx.Response) -> TransientError | PermanentError:
        status = response.status_code
        label = f"{self.url}: HTTP {status} {response.reason_phrase}".rstrip()
        if status in (401, 403):
            hint = (
                "the datastore rejected the configured credentials"
                if self.has_credentials
                else "the datastore requires credentials"
            )
            return PermanentError(f"{label} ({hint})")
        if status in (404, 410):
            return NotFoundError(f"{label} (not found on the datastore)")
        if status in _TRANSIENT_STATUS or 500 <= status <= 599:
            return TransientError(label, retry_after=retry_after_seconds(response))
        return PermanentError(f"{label} (unexpected answer)")

    def classify(self, exc: httpx.HTTPError) -> TransientError | PermanentError:
        """Map a transport failure to our errors without echoing request headers."""
        where = (
            f"after receiving {self.received} bytes in this attempt "
            f"({self.sink.offset} held in total)"
        )
        if isinstance(exc, httpx.TimeoutException):
            return TransientError(f"{self.url}: timed out ({type(exc).__name__}) {where}")
        verify = _cert_verify_error(exc)
        if verify is not None:
            return PermanentError(f"{self.url}: TLS certificate verification failed: {verify}")
        if isinstance(exc, (httpx.TooManyRedirects, httpx.UnsupportedProtocol, httpx.DecodingError)):
            return PermanentError(f"{self.url}: {type(exc).__name__}: {exc}")
        if isinstance(exc, httpx.ConnectError):
            return TransientError(f"{self.url}: cannot connect: {exc}")
        return TransientError(f"{self.url}: connection lost {where}: {type(exc).__name__}: {exc}")


def _split_base(fqdn: str, secure_default: bool) -> tuple[str, str, list[str]]:
    """Scheme, host[:port] and path segments of the datastore address."""
    text = fqdn.strip()
    match = _SCHEME.match(text)
    if match:
        scheme = match.group(1).lower()
        rest = text[match.end() :]
        if scheme not in ("http", "https"):
            raise ConfigError(f"unsupported scheme {scheme!r} for an HTTP datastore")
    else:
        scheme = "https" if secure_default else "http"
        rest = text
    if "?" in rest or "#" in rest:
        raise ConfigError("datastore address must not contain a query or fragment")
    netloc, _, path = rest.partition("/")
    if "@" in netloc:
        # Do not echo the address: it would contain the credentials.
        raise ConfigError("credentials in the datastore address are not allowed; use apiKey/password")
    if not netloc:
        raise ConfigError("datastore address has no host")
    try:
        if not httpx.URL(f"{scheme}://{netloc}/").host:
            raise ConfigError("datastore address has no host")
    except httpx.InvalidURL as exc:
        raise ConfigError(f"invalid datastore address {netloc!r}: {exc}") from exc
    return scheme, netloc, _segments(path, "datastore address path")


def _segments(text: str, what: str) -> list[str]:
    """Non-empty path segments; refuses anything that could climb or confuse a server."""
    out = []
    for seg in text.split("/"):
        if not seg:
            continue
        if seg in (".", "..") or unquote(seg) in (".", ".."):
            raise ConfigError(f"{what} must not contain '.' or '..' segments")
        if "\\" in seg or _CONTROL.search(seg):
            raise ConfigError(f"{what} must not contain backslashes or control characters")
        out.append(seg)
    return out


class ProxyRoutingTransport(httpx.BaseTransport):
    """Sends each request direct or through the proxy ``proxy.choose_for_url`` names for its URL.

    One decision per request, so a redirect to another host or a registry's token realm elsewhere is
    routed by its own host. Trusts the system roots, dsCertPEM and the proxy CA, for the server and for
    TLS to an https proxy. A failure of the proxy raises the DatastoreError naming it (never its credentials).
    """

    def __init__(self, settings: ProxySettings | None, ca_pems: Sequence[bytes]) -> None:
        self._settings = settings
        self._verify = ssl_context(tuple(ca_pems) + (settings.ca_pems if settings else ()))
        self._direct = httpx.HTTPTransport(verify=self._verify)
        self._proxied: dict[str, httpx.HTTPTransport] = {}
        self._lock = threading.Lock()

    def _through(self, proxy: str) -> httpx.HTTPTransport:
        with self._lock:
            transport = self._proxied.get(proxy)
            if transport is None:
                tls = self._verify if proxy.startswith("https://") else None  # httpcore refuses it for http://
                transport = self._proxied[proxy] = httpx.HTTPTransport(
                    verify=self._verify, proxy=httpx.Proxy(proxy, ssl_context=tls))
            return transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        proxy = proxies.choose_for_url(self._settings, str(request.url))
        if proxy is None:
            return self._direct.handle_request(request)
        name = proxies.where(str(request.url))
        try:
            response = self._through(proxy).handle_request(request)
        except httpx.ProxyError as exc:  # the proxy answered CONNECT with something other than 2xx
            raise proxies.proxy_failure(proxy, name, status=proxies.tunnel_status(exc), reason=str(exc)) from exc
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise proxies.proxy_failure(proxy, name, reason=proxies.failure_reason(exc),
                                        tls=_cert_verify_error(exc)) from exc
        if response.status_code == 407:  # a plain-HTTP request the proxy answered itself
            response.close()
            raise proxies.proxy_failure(proxy, name, status=407)
        return response

    def close(self) -> None:
        self._direct.close()
        with self._lock:
            for transport in self._proxied.values():
                transport.close()
            self._proxied.clear()


def ssl_context(ca_pems: Sequence[bytes]) -> ssl.SSLContext:
    """System CAs plus the datastore's own (dsCertPEM)."""
    ctx = ssl.create_default_context()
    for index, pem in enumerate(ca_pems):
        try:
            ctx.load_verify_locations(cadata=pem.decode("ascii"))
        except (UnicodeDecodeError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"dsCertPEM[{index}] is not a valid PEM certificate: {exc}") from exc
    return ctx


def refuse_downgrade(response: httpx.Response) -> None:
    """A redirect must never leave https: that would expose content and credentials."""
    url = response.request.url
    if url.scheme != "https" or not response.has_redirect_location:
        return
    target = url.join(response.headers["location"])
    if target.scheme != "https":
        raise PermanentError(
            f"https://{url.netloc.decode('ascii', 'replace')}{url.path}: "
            f"refusing redirect from https to {target.scheme}"
        )


def _cert_verify_error(exc: BaseException) -> str | None:
    """The verification reason if ``exc`` was caused by a rejected certificate."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur.verify_message or "certificate rejected"
        cur = cur.__cause__ or cur.__context__
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return "certificate rejected"
    return None


def _parse_content_range(value: str | None) -> _ContentRange | None:
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        return None
    first, last, total = match.groups()
    parsed = _ContentRange(
        start=int(first) if first is not None else None,
        end=int(last) if last is not None else None,
        total=None if total == "*" else int(total),
    )
    if parsed.start is not None and parsed.end is not None and parsed.end < parsed.start:
        return None
    return parsed


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else None


def response_validator(response: httpx.Response) -> str | None:
    """What a later If-Range may carry for this answer's content (RFC 9110 §13.1.5): its ETag unless weak;
    else its Last-Modified when that date is a strong validator, i.e. the answer's Date is at least a second
    later (§8.8.2.2: the file cannot have changed twice within that second unseen); else None."""
    etag = response.headers.get("etag", "").strip()
    if len(etag) >= 2 and etag[0] == etag[-1] == '"':
        return etag
    modified = response.headers.get("last-modified", "").strip()
    when, date = _http_date(modified), _http_date(response.headers.get("date"))
    if when is not None and date is not None and (date - when).total_seconds() >= 1:
        return modified
    return None


def _validator_like(sent: str, response: httpx.Response) -> str | None:
    """The answer's validator of the same kind as ``sent`` (an entity tag or a date), if it has one."""
    name = "etag" if _is_entity_tag(sent) else "last-modified"
    value = response.headers.get(name, "").strip()
    return value or None


def _same_version(sent: str, now: str) -> bool:
    if _is_entity_tag(sent):
        return sent.removeprefix("W/") == now.removeprefix("W/")  # the opaque tags
    a, b = _http_date(sent), _http_date(now)
    return a == b if a is not None and b is not None else sent == now


def _is_entity_tag(value: str) -> bool:
    return value.startswith(('"', "W/"))


def _http_date(value: str | None) -> datetime | None:
    try:
        when = email.utils.parsedate_to_datetime(value or "")
    except (TypeError, ValueError, IndexError):
        return None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    when = _http_date(value)
    if when is None:
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
