"""S3 datastore (DsS3): objects in a bucket, fetched with ranged GETs through boto3.

Field mapping, as EVE's downloader uses them (lf-edge/eve pkg/pillar/cmd/downloader/syncop.go):
``fqdn`` is the endpoint (an S3-compatible URL; AWS for the region when empty),
``dpath`` the bucket (a key prefix may follow its first ``/``), ``apiKey`` the
access key, ``password`` the secret key, ``region`` the region, and the
content tree's URL the object key under that prefix.

One ``fetch`` is one attempt, as for every datastore: it resumes from
``sink.offset`` with a ``Range`` GET, enforces ``maxSizeBytes`` from the object's
size before reading and while streaming, and classifies failures as transient
(network, 5xx, throttling) or permanent (no such bucket or key, refused
credentials). boto3's own retries are off: the downloader's backoff owns them.
"""

from __future__ import annotations

import re
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgevol.netaddr import is_loopback_host

from .base import Cancelled, ConfigError, NotFoundError, PermanentError, ProgressFn, Sink, TransientError

CHUNK_SIZE = 1 << 20
_TOTAL = re.compile(r"/(\d+)\s*$")
_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AuthorizationHeaderMalformed",
           "InvalidToken", "ExpiredToken", "AllAccessDisabled"}
_TRANSIENT = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "503", "500", "502", "504",
              "Throttling", "ThrottlingException", "RequestTimeTooSkewed"}


class S3Datastore:
    """A DsS3 datastore; raises ConfigError for an unusable endpoint, bucket or CA certificate."""

    def __init__(self, fqdn: str, dpath: str, *, api_key: str = "", password: str = "", region: str = "",
                 ca_pems: Sequence[bytes] = (), connect_timeout: float = 10.0, read_timeout: float = 30.0) -> None:
        import boto3  # imported only when a device has an S3 datastore: it is a large import
        from botocore import UNSIGNED
        from botocore.config import Config

        bucket, _, prefix = dpath.strip("/").partition("/")
        if not bucket:
            raise ConfigError("an S3 datastore names its bucket in dpath")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        endpoint = _endpoint(fqdn)
        self._ca_file = _ca_bundle(ca_pems)
        self.where = f"s3://{bucket}" + (f" at {endpoint}" if endpoint else "")
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name=region or "us-east-1",
            aws_access_key_id=api_key or None, aws_secret_access_key=password or None,
            verify=self._ca_file.name if self._ca_file else True,
            config=Config(signature_version=None if (api_key or password) else UNSIGNED,
                          s3={"addressing_style": "path" if endpoint else "auto"},
                          retries={"max_attempts": 1, "mode": "standard"},
                          connect_timeout=connect_timeout, read_timeout=read_timeout))

    def key_for(self, suffix: str) -> str:
        return f"{self.prefix}/{suffix.lstrip('/')}" if self.prefix else suffix.lstrip("/")

    def fetch(self, suffix: str, sink: Sink, *, max_size: int | None = None, progress: ProgressFn | None = None,
              cancel: threading.Event | None = None) -> None:
        """One attempt to deliver object ``suffix`` from byte ``sink.offset`` to its end."""
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.key_for(suffix)
        name = f"{self.where}/{key}"
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        start = sink.offset
        try:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
            if start > 0:
                kwargs["Range"] = f"bytes={start}-"
            try:
                resp = self._client.get_object(**kwargs)
            except ClientError as exc:
                if start > 0 and _code(exc) in ("InvalidRange", "416"):
                    sink.reset()  # the partial is longer than the object now is: start over
                    raise TransientError(f"{name}: the partial no longer fits the object; starting over") from exc
                raise
            total = _total(resp)
            if max_size is not None and total > max_size:
                raise PermanentError(f"{name} is {total} bytes, more than maxSizeBytes {max_size}")
            if start > 0 and not resp.get("ContentRange"):
                sink.reset()  # the whole object came back: the store ignored the range
            body = resp["Body"]
            try:
                for chunk in body.iter_chunks(CHUNK_SIZE):
                    if cancel is not None and cancel.is_set():
                        raise Cancelled()
                    if max_size is not None and sink.offset + len(chunk) > max_size:
                        raise PermanentError(f"{name} grew past maxSizeBytes {max_size} while downloading")
                    sink.write(chunk)
                    if progress is not None:
                        progress(sink.offset, total)
            finally:
                body.close()
            if sink.offset != total:
                raise TransientError(f"{name}: the connection ended at byte {sink.offset} of {total}")
        except ClientError as exc:
            raise _classify(exc, name) from exc
        except BotoCoreError as exc:  # connection refused or reset, timeouts, a body cut short
            raise TransientError(f"{name}: {exc}") from exc

    def close(self) -> None:
        self._client.close()
        if self._ca_file is not None:
            Path(self._ca_file.name).unlink(missing_ok=True)


def _endpoint(fqdn: str) -> str | None:
    """The endpoint URL, or None for AWS; plain HTTP only for a loopback endpoint."""
    fqdn = fqdn.strip()
    if not fqdn:
        return None
    url = fqdn if "://" in fqdn else f"https://{fqdn}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"S3 endpoint {fqdn!r} is not an http(s) URL")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError(f"S3 endpoint {fqdn!r} is plain HTTP; only a loopback endpoint may be (credentials and "
                          "content would travel unprotected)")
    return url.rstrip("/")


def _ca_bundle(ca_pems: Sequence[bytes]) -> Any:
    """botocore takes a CA bundle as a file: the datastore's dsCertPEM written to a private temp file."""
    if not ca_pems:
        return None
    f = tempfile.NamedTemporaryFile(prefix="edgevol-s3-ca-", suffix=".pem", delete=False)
    with f:
        f.write(b"\n".join(bytes(p).strip() for p in ca_pems) + b"\n")
    return f


def _total(resp: dict[str, Any]) -> int:
    """The object's whole size: from Content-Range when the answer is ranged, else Content-Length."""
    match = _TOTAL.search(resp.get("ContentRange") or "")
    return int(match.group(1)) if match else int(resp["ContentLength"])


def _code(exc: Any) -> str:
    err = exc.response.get("Error", {}) if hasattr(exc, "response") else {}
    return str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _classify(exc: Any, name: str) -> Exception:
    code = _code(exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    message = exc.response.get("Error", {}).get("Message", "") or str(exc)
    if code in _NOT_FOUND or status == 404:
        return NotFoundError(f"{name}: not found on the datastore ({code}: {message})")
    if code in _DENIED or status in (401, 403):
        return PermanentError(f"{name}: the datastore refused the credentials ({code}: {message}); check the "
                              "datastore's apiKey (access key) and password (secret key)")
    if code in _TRANSIENT or status >= 500 or status == 429:
        return TransientError(f"{name}: {code}: {message}")
    return PermanentError(f"{name}: {code}: {message}")
