"""S3 datastore (DsS3): objects in a bucket, fetched with ranged GETs through boto3.

Field mapping, as EVE's downloader uses them (lf-edge/eve pkg/pillar/cmd/downloader/syncop.go):
``fqdn`` is the endpoint (an S3-compatible URL; AWS for the region when empty),
``dpath`` the bucket (a key prefix may follow its first ``/``), ``apiKey`` the
access key, ``password`` the secret key, ``region`` the region, and the
content tree's URL the object key under that prefix.

A fetch attempt is ``ranged.fetch_ranged`` over a HEAD (size and ETag) and ranged
GETs made conditional on that ETag (``If-Match``: a replaced object answers 412,
ObjectChanged, instead of another version's bytes); this module classifies
failures as transient (network, 5xx, throttling) or permanent (no such bucket or
key, refused credentials). boto3's own retries are off: the
downloader's backoff owns them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from edgevol.model.desired import ProxySettings

from .base import ConfigError, NotFoundError, PermanentError, TransientError
from .proxy import botocore_proxies, cert_failure, failure_reason, proxy_failure, tunnel_status
from .ranged import BucketStore, ObjectChanged, ObjectStat, skip_bytes
from .tls import ca_bundle_file, endpoint_url, remove_ca_bundle

CHUNK_SIZE = 1 << 20
_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AuthorizationHeaderMalformed",
           "InvalidToken", "ExpiredToken", "AllAccessDisabled"}
_TRANSIENT = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "503", "500", "502", "504",
              "Throttling", "ThrottlingException", "RequestTimeTooSkewed"}


class S3Datastore(BucketStore):
    """A DsS3 datastore; raises ConfigError for an unusable endpoint, bucket or CA certificate."""

    parallel_ranges = True  # boto3 clients are thread-safe, and S3 serves ranges of one object in parallel

    def __init__(self, fqdn: str, dpath: str, *, api_key: str = "", password: str = "", region: str = "",
                 ca_pems: Sequence[bytes] = (), connect_timeout: float = 10.0, read_timeout: float = 30.0,
                 proxy: ProxySettings | None = None) -> None:
        import boto3  # imported only when a device has an S3 datastore: it is a large import
        from botocore import UNSIGNED
        from botocore.config import Config

        bucket, _, prefix = dpath.strip("/").partition("/")
        if not bucket:
            raise ConfigError("an S3 datastore names its bucket in dpath")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        endpoint = endpoint_url(fqdn, "S3 endpoint")
        region = region or "us-east-1"
        # One host per client, so one proxy decision: AWS's regional endpoint when fqdn names none.
        routes, self._proxy = botocore_proxies(proxy, endpoint or f"https://s3.{region}.amazonaws.com")
        self._ca_file = ca_bundle_file(tuple(ca_pems) + (proxy.ca_pems if proxy else ()), "s3")
        self.where = f"s3://{bucket}" + (f" at {endpoint}" if endpoint else "")
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name=region,
            aws_access_key_id=api_key or None, aws_secret_access_key=password or None,
            verify=self._ca_file or True,
            config=Config(signature_version=None if (api_key or password) else UNSIGNED,
                          s3={"addressing_style": "path" if endpoint else "auto"},
                          retries={"max_attempts": 1, "mode": "standard"},
                          connect_timeout=connect_timeout, read_timeout=read_timeout,
                          # never None: botocore would read the environment's proxies then
                          proxies=routes,
                          proxies_config={"proxy_ca_bundle": self._ca_file} if self._ca_file and routes else None))

    def describe(self, suffix: str) -> str:
        return f"{self.where}/{self.key_for(suffix)}"

    def stat(self, suffix: str) -> ObjectStat:
        with self._errors(suffix):
            head = self._client.head_object(Bucket=self.bucket, Key=self.key_for(suffix))
        return ObjectStat(int(head["ContentLength"]), head.get("ETag") or None)

    def read(self, suffix: str, start: int, end: int, version: str | None) -> Iterator[bytes]:
        conditions = {"IfMatch": version} if version else {}
        with self._errors(suffix):
            resp = self._client.get_object(Bucket=self.bucket, Key=self.key_for(suffix),
                                           Range=f"bytes={start}-{end - 1}", **conditions)
            skip = start if not resp.get("ContentRange") else 0  # a store that ignored the range sent it all
            body = resp["Body"]
            try:
                yield from skip_bytes(body.iter_chunks(CHUNK_SIZE), skip)
            finally:
                body.close()

    @contextmanager
    def _errors(self, suffix: str) -> Iterator[None]:
        """botocore's exceptions as datastore errors naming the object."""
        from botocore.exceptions import BotoCoreError, ClientError, ProxyConnectionError, SSLError

        try:
            yield
        except ClientError as exc:
            if self._proxy and _status(exc) == 407:  # a plain-HTTP request the proxy answered itself
                raise proxy_failure(self._proxy, self.describe(suffix), status=407) from exc
            raise _classify(exc, self.describe(suffix)) from exc
        except (ProxyConnectionError, SSLError) as exc:
            if self._proxy is None or (isinstance(exc, SSLError) and cert_failure(exc) is None):
                raise TransientError(f"{self.describe(suffix)}: {exc}") from exc
            raise proxy_failure(self._proxy, self.describe(suffix), status=tunnel_status(exc),
                                reason=failure_reason(exc), tls=cert_failure(exc)) from exc
        except BotoCoreError as exc:  # connection refused or reset, timeouts, a body cut short
            raise TransientError(f"{self.describe(suffix)}: {exc}") from exc

    def close(self) -> None:
        self._client.close()
        remove_ca_bundle(self._ca_file)


def _code(exc: Any) -> str:
    err = exc.response.get("Error", {}) if hasattr(exc, "response") else {}
    return str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _classify(exc: Any, name: str) -> Exception:
    code = _code(exc)
    status = _status(exc)
    message = exc.response.get("Error", {}).get("Message", "") or str(exc)
    if code == "PreconditionFailed" or status == 412:  # only our If-Match asks for it: the object was replaced
        return ObjectChanged(f"{name}: the object changed during the download ({code}: {message})")
    if code in _NOT_FOUND or status == 404:
        return NotFoundError(f"{name}: not found on the datastore ({code}: {message})")
    if code in _DENIED or status in (401, 403):
        return PermanentError(f"{name}: the datastore refused the credentials ({code}: {message}); check the "
                              "datastore's apiKey (access key) and password (secret key)")
    if code in _TRANSIENT or status >= 500 or status == 429:
        return TransientError(f"{name}: {code}: {message}")
    return PermanentError(f"{name}: {code}: {message}")
