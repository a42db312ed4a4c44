"""HttpDatastore against the real loopback file server (edgevol.tools.httpserve)."""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgevol.device.datastores import (
    Cancelled,
    DatastoreError,
    HttpDatastore,
    PermanentError,
    TransientError,
)
from edgevol.device.datastores.factory import BlobSource, DatastoreClients
from edgevol.device.datastores.http import response_validator
from edgevol.device.datastores.provenance import CONTENT_ADDRESSED, source_key
from edgevol.model.desired import Datastore as DatastoreSpec
from edgevol.model.desired import DatastoreKind
from edgevol.tools.faultproxy import FaultProxy, Rule
from edgevol.tools.httpserve import RangeHTTPServer, serve
from tests.configs import ConfigBuilder, sha256_file
from tests.conftest import make_raw_image, start_agent
from tests.datastore_cases import assert_volume_is, kill_at_partial, rerun_through, resumed_from, run_once
from tests.sinks import FileSink

MiB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "images" / "sub dir").mkdir(parents=True)
    return r


@pytest.fixture
def blob(root: Path) -> bytes:
    data = os.urandom(5 * MiB + 12345)
    (root / "images" / "disk.img").write_bytes(data)
    return data


@pytest.fixture
def server(root: Path) -> Iterator[RangeHTTPServer]:
    srv = serve(root)
    yield srv
    srv.shutdown()


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[FileSink]:
    s = FileSink(tmp_path / "sink.bin")
    yield s
    s.close()


def datastore(srv: RangeHTTPServer, **kw: object) -> HttpDatastore:
    return HttpDatastore(srv.url, "images", secure_default=False, **kw)  # type: ignore[arg-type]


def fetch(ds: HttpDatastore, suffix: str, sink: FileSink, **kw: object) -> None:
    opts: dict[str, object] = {"max_size": None, "progress": None, "cancel": None}
    opts.update(kw)
    ds.fetch(suffix, sink, **opts)  # type: ignore[arg-type]


def if_range(srv: RangeHTTPServer, index: int) -> str | None:
    """The If-Range header of the ``index``-th request the server saw."""
    return {k.lower(): v for k, v in srv.request_headers[index].items()}.get("if-range")


def replace(path: Path, data: bytes, mtime: float | None = None) -> None:
    """Replace a served file as a deploy does: a new file renamed over the old one (a new inode)."""
    new = path.with_name(path.name + ".new")
    new.write_bytes(data)
    if mtime is not None:
        os.utime(new, (mtime, mtime))
    os.replace(new, path)


def test_full_download_matches_bytes_and_reports_progress(server, blob, sink):
    seen: list[tuple[int, int | None]] = []
    with datastore(server) as ds:
        fetch(ds, "disk.img", sink, progress=lambda done, total: seen.append((done, total)))
    assert sha(sink.content()) == sha(blob)
    assert seen[-1] == (len(blob), len(blob))
    assert server.requests == [("GET", "/images/disk.img", None)]


def test_resume_after_drop_fetches_only_the_remainder(server, blob, sink):
    server.drop_after = 3 * MiB + 100
    with datastore(server) as ds:
        with pytest.raises(TransientError) as err:
            fetch(ds, "disk.img", sink)
        assert err.value.retryable
        assert "bytes" in str(err.value)
        held = sink.offset
        assert 0 < held <= server.drop_after
        fetch(ds, "disk.img", sink)
    assert sha(sink.content()) == sha(blob)
    assert sink.resets == 0
    assert server.requests[-1][2] == f"bytes={held}-"
    # the resume was conditional on the strong ETag of the answer the partial came from, and it held
    assert sink.validator is not None and sink.validator.startswith('"')
    assert if_range(server, -1) == sink.validator and server.statuses == [200, 206]
    assert server.wait_idle()
    assert server.bytes_served == server.drop_after + (len(blob) - held)


def test_server_ignoring_range_resets_and_takes_full_body(server, blob, sink):
    sink.write(blob[: 2 * MiB])
    server.ignore_range = True
    with datastore(server) as ds:
        fetch(ds, "disk.img", sink)
    assert sink.resets == 1
    assert sha(sink.content()) == sha(blob)
    assert server.requests[0][2] == f"bytes={2 * MiB}-"


def test_already_complete_answers_416_and_keeps_bytes(server, blob, sink):
    with datastore(server) as ds:
        fetch(ds, "disk.img", sink)
        fetch(ds, "disk.img", sink)  # a complete partial resumed (the agent died before its commit)
    assert sink.resets == 0
    assert sha(sink.content()) == sha(blob)
    assert server.requests[1][2] == f"bytes={len(blob)}-" and if_range(server, 1) == sink.validator
    assert server.statuses == [200, 416]
    assert server.wait_idle()
    assert server.bytes_served == len(blob)


# -- conditional resume ----------------------------------------------------------


def test_a_file_replaced_between_attempts_comes_whole_in_the_same_attempt(root, server, blob, sink):
    server.drop_after = 2 * MiB
    with datastore(server) as ds:
        with pytest.raises(TransientError):
            fetch(ds, "disk.img", sink)
        old, held = sink.validator, sink.offset
        new = os.urandom(len(blob))  # the same size: only the validator can tell
        replace(root / "images" / "disk.img", new)
        fetch(ds, "disk.img", sink)
    assert sink.content() == new and sink.resets == 1
    assert sink.validator not in (None, old)  # the new file's, for the next resume
    assert server.requests[1][2] == f"bytes={held}-" and if_range(server, 1) == old
    assert server.statuses == [200, 200]  # If-Range did not hold: the whole new file, in one request
    assert server.wait_idle()
    assert server.bytes_served == server.drop_after + len(new)


def test_last_modified_is_the_validator_when_there_is_no_etag(root, server, blob, sink):
    server.etag = "none"
    path = root / "images" / "disk.img"
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))
    server.drop_after = MiB
    with datastore(server) as ds:
        with pytest.raises(TransientError):
            fetch(ds, "disk.img", sink)
        assert sink.validator == email.utils.formatdate(an_hour_ago, usegmt=True)
        fetch(ds, "disk.img", sink)  # unchanged: the rest only
        assert sink.content() == blob and sink.resets == 0
        assert if_range(server, 1) == sink.validator and server.statuses == [200, 206]
        sink.reset()
        server.drops_remaining = 1
        with pytest.raises(TransientError):
            fetch(ds, "disk.img", sink)
        new = os.urandom(len(blob))
        replace(path, new, mtime=an_hour_ago + 60)
        fetch(ds, "disk.img", sink)
    assert sink.content() == new and if_range(server, 3) == email.utils.formatdate(an_hour_ago, usegmt=True)
    assert server.statuses[2:] == [200, 200]


def test_a_weak_etag_is_never_sent_in_if_range(root, server, blob, sink):
    server.etag = "weak"
    path = root / "images" / "disk.img"
    a_minute_ahead = time.time() + 60  # a Last-Modified no earlier than the answer's Date is no strong validator
    os.utime(path, (a_minute_ahead, a_minute_ahead))
    server.drop_after = MiB
    with datastore(server) as ds:
        with pytest.raises(TransientError):
            fetch(ds, "disk.img", sink)
        assert sink.validator is None
        held = sink.offset
        fetch(ds, "disk.img", sink)  # a plain Range, as without validators; the digest check still holds
        assert sink.content() == blob and server.requests[1][2] == f"bytes={held}-"
        assert if_range(server, 1) is None
        an_hour_ago = time.time() - 3600
        os.utime(path, (an_hour_ago, an_hour_ago))
        sink.reset()
        server.drops_remaining = 1
        with pytest.raises(TransientError):
            fetch(ds, "disk.img", sink)
        fetch(ds, "disk.img", sink)
    assert sink.content() == blob
    assert if_range(server, 3) == email.utils.formatdate(an_hour_ago, usegmt=True)  # Last-Modified, not W/"..."


def test_response_validator_follows_rfc_9110():
    def answer(**headers: str) -> httpx.Response:
        return httpx.Response(200, headers={k.replace("_", "-"): v for k, v in headers.items()})

    old, now = "Tue, 01 Sep 2026 10:00:00 GMT", "Tue, 01 Sep 2026 10:00:01 GMT"
    assert response_validator(answer(etag='"abc"', last_modified=old, date=now)) == '"abc"'
    assert response_validator(answer(etag='W/"abc"', last_modified=old, date=now)) == old
    assert response_validator(answer(etag='W/"abc"', last_modified=now, date=now)) is None  # same second
    assert response_validator(answer(last_modified=old)) is None  # no Date to tell
    assert response_validator(answer(etag="unquoted")) is None
    assert response_validator(answer()) is None


def test_a_server_ignoring_if_range_sends_206_for_a_changed_file_and_the_partial_goes(root, server, blob, sink):
    server.ignore_if_range = True
    server.drop_after = 2 * MiB
    with datastore(server) as ds:
        with pytest.raises(TransientError):
            fetch(ds, "disk.img", sink)
        held = sink.offset
        new = os.urandom(len(blob) + 1000)
        replace(root / "images" / "disk.img", new)
        fetch(ds, "disk.img", sink)  # the 206 names another ETag: the partial goes, and the file comes whole
    assert sink.content() == new and sink.resets == 1
    assert [r[2] for r in server.requests] == [None, f"bytes={held}-", None]
    assert server.statuses == [200, 206, 200]


def test_a_validator_is_only_ever_shown_to_the_source_that_gave_it(tmp_path, root, server, blob, sink):
    """Through DatastoreClients, as the downloader fetches: the validator kept beside a partial names its source,
    and only that source is ever sent it (provenance.py)."""
    other_root = tmp_path / "mirror"
    (other_root / "images").mkdir(parents=True)
    (other_root / "images" / "disk.img").write_bytes(blob)
    mirror = serve(other_root)
    clients = DatastoreClients()
    try:
        primary = DatastoreSpec(uuid="a", kind=DatastoreKind.HTTP, fqdn=server.url, dpath="images")
        fallback = DatastoreSpec(uuid="b", kind=DatastoreKind.HTTP, fqdn=mirror.url, dpath="images")
        source = BlobSource(primary, "disk.img", alternates=(BlobSource(fallback, "disk.img"),))
        digest = sha(blob)

        def fetch_blob(src: BlobSource) -> None:
            clients.fetch_blob(src, digest, sink, progress=None, cancel=None)

        # the primary drops after 2 MiB: the mirror continues its partial with a plain range, never shown the
        # primary's ETag (the digest check at commit vouches for those bytes), and records its own
        server.drop_after = 2 * MiB
        fetch_blob(source)
        held = int(str(mirror.requests[0][2]).removeprefix("bytes=").rstrip("-"))
        assert sink.content() == blob and sink.resets == 0 and 0 < held <= 2 * MiB
        assert if_range(mirror, 0) is None
        key_b = source_key(fallback, "disk.img")
        assert sink.validator is not None and sink.validator.startswith(key_b + ' "')
        # a partial of the primary's resumes there, with the primary's own ETag (not the stored record)
        sink.reset()
        server.drops_remaining = 1
        alone = BlobSource(primary, "disk.img")
        with pytest.raises(TransientError):
            fetch_blob(alone)
        key_a, record = source_key(primary, "disk.img"), sink.validator
        assert record is not None and record.startswith(key_a + ' "')
        fetch_blob(alone)
        assert sink.content() == blob and if_range(server, -1) == record.split(" ", 1)[1]
        # bytes the mirror (or a registry, content-addressed) wrote last go on at the primary with a plain range:
        # the primary is never sent the mirror's ETag
        for other in (f'{key_b} "the-mirror-etag"', CONTENT_ADDRESSED):
            sink.reset()
            sink.write(blob[:MiB])
            sink.set_validator(other)
            fetch_blob(alone)
            assert sink.content() == blob and server.statuses[-1] == 206
            assert server.requests[-1][2] == f"bytes={MiB}-" and if_range(server, -1) is None
            assert sink.validator is not None and sink.validator.startswith(key_a + ' "')
    finally:
        clients.close()
        mirror.shutdown()


def test_offset_beyond_file_starts_over_in_the_same_attempt(server, blob, sink):
    sink.write(blob + b"extra")
    with datastore(server) as ds:
        fetch(ds, "disk.img", sink)  # 416: the partial cannot be this file's; a second request from byte 0
    assert sink.resets == 1
    assert sha(sink.content()) == sha(blob)
    assert [r[2] for r in server.requests] == [f"bytes={len(blob) + 5}-", None]


def test_not_found_is_permanent(server, blob, sink):
    with datastore(server) as ds:
        with pytest.raises(PermanentError) as err:
            fetch(ds, "missing.img", sink)
    assert not err.value.retryable
    assert "404" in str(err.value)


def test_server_errors_are_transient_then_succeed(server, blob, sink):
    server.fail_with = [503, 429]
    with datastore(server) as ds:
        for status in ("503", "429"):
            with pytest.raises(TransientError, match=status):
                fetch(ds, "disk.img", sink)
        fetch(ds, "disk.img", sink)
    assert sha(sink.content()) == sha(blob)


def test_max_size_below_content_length_fails_before_body(root, server, sink):
    big = root / "images" / "big.img"
    with open(big, "wb") as f:
        f.truncate(64 * MiB)
    with datastore(server) as ds:
        with pytest.raises(PermanentError, match=r"announces 67108864 bytes.*maxSizeBytes 1048576"):
            fetch(ds, "big.img", sink, max_size=MiB)
    assert sink.offset == 0
    assert server.wait_idle()
    assert server.bytes_served < 32 * MiB


def test_size_limit_enforced_while_streaming_without_content_length(root, server, sink):
    # HTTP/1.1 frames a body by Content-Length, so only a body without one
    # (ended by closing the connection) can run past what was announced.
    big = root / "images" / "big.img"
    with open(big, "wb") as f:
        f.truncate(64 * MiB)
    server.omit_content_length = True
    with datastore(server) as ds:
        with pytest.raises(PermanentError, match="larger than maxSizeBytes 2097152"):
            fetch(ds, "big.img", sink, max_size=2 * MiB)
    assert sink.offset <= 2 * MiB
    assert server.wait_idle()
    assert server.bytes_served < 32 * MiB


def test_content_length_above_max_with_resume_offset(server, blob, sink):
    sink.write(blob[:MiB])
    with datastore(server) as ds:
        with pytest.raises(PermanentError, match=f"announces {len(blob)} bytes"):
            fetch(ds, "disk.img", sink, max_size=len(blob) - 1)
        fetch(ds, "disk.img", sink, max_size=len(blob))
    assert sha(sink.content()) == sha(blob)


def test_lying_content_length_is_a_short_body(server, blob, sink):
    server.lie_content_length = len(blob) + 1000
    with datastore(server) as ds:
        with pytest.raises(TransientError, match="bytes"):
            fetch(ds, "disk.img", sink)
        server.lie_content_length = None
        fetch(ds, "disk.img", sink)
    assert sha(sink.content()) == sha(blob)


def test_basic_auth_is_sent_and_never_echoed(server, blob, sink):
    secret = "pa55-w0rd-XYZZY"
    server.auth = ("edge-user", secret)
    with datastore(server, api_key="edge-user", password=secret) as ds:
        assert secret not in repr(ds)
        fetch(ds, "disk.img", sink)
        assert sha(sink.content()) == sha(blob)
        server.drop_after = MiB
        sink.reset()
        with pytest.raises(TransientError) as dropped:
            fetch(ds, "disk.img", sink)
    assert secret not in str(dropped.value) and "edge-user" not in str(dropped.value)
    with datastore(server, api_key="edge-user", password="wrong-" + secret) as ds:
        with pytest.raises(PermanentError, match="401") as denied:
            fetch(ds, "disk.img", sink)
    assert secret not in str(denied.value) and "edge-user" not in str(denied.value)
    with datastore(server) as ds:
        with pytest.raises(PermanentError, match="requires credentials"):
            fetch(ds, "disk.img", sink)


def test_credentials_in_address_are_refused_without_echo():
    with pytest.raises(ValueError) as err:
        HttpDatastore("http://user:hunter2@127.0.0.1:1", secure_default=False)
    assert "hunter2" not in str(err.value)


def test_cancel_stops_between_chunks(server, blob, sink):
    cancel = threading.Event()
    with datastore(server) as ds:
        with pytest.raises(Cancelled):
            fetch(ds, "disk.img", sink, cancel=cancel, progress=lambda done, total: cancel.set())
    assert not isinstance(Cancelled(), DatastoreError)
    assert sink.offset < len(blob)


def test_connection_refused_is_transient(root, sink):
    srv = serve(root)
    url = srv.url
    srv.shutdown()
    with HttpDatastore(url, secure_default=False) as ds:
        with pytest.raises(TransientError):
            fetch(ds, "x", sink)


def test_redirect_followed_keeps_range(root, server, blob, sink):
    server.redirects["/images/old.img"] = f"{server.url}/images/disk.img"
    sink.write(blob[:MiB])
    with datastore(server) as ds:
        fetch(ds, "old.img", sink)
    assert sha(sink.content()) == sha(blob)
    assert server.requests[-1] == ("GET", "/images/disk.img", f"bytes={MiB}-")


def test_url_for_joins_quotes_and_refuses_dotdot():
    ds = HttpDatastore("files.example.com/base/", "/images//v1/", secure_default=True)
    assert ds.url_for("/a b/c#d?.img") == "https://files.example.com/base/images/v1/a%20b/c%23d%3F.img"
    assert HttpDatastore("http://h:8080", secure_default=True).url_for("x") == "http://h:8080/x"
    assert HttpDatastore("h", secure_default=False).url_for("100%.img") == "http://h/100%25.img"
    for bad in ("../etc/passwd", "a/../../b", "a/./b", "%2e%2e/x", "a\\..\\b", "a\x00b"):
        with pytest.raises(ValueError):
            ds.url_for(bad)
    with pytest.raises(ValueError):
        HttpDatastore("ftp://h", secure_default=False)
    with pytest.raises(ValueError):
        HttpDatastore("h", "../up", secure_default=False)


def test_dotdot_suffix_fails_fetch_permanently_without_request(server, sink):
    with datastore(server) as ds:
        with pytest.raises(PermanentError):
            fetch(ds, "../secret", sink)
    assert server.requests == []


def test_server_refuses_path_traversal(tmp_path, root, server):
    (tmp_path / "secret.txt").write_text("TOP-SECRET")
    (root / "images" / "escape").symlink_to(tmp_path / "secret.txt")
    host, port = server.server_address[:2]
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/images/../../secret.txt",
                 "/images/%2E%2E/%2e%2e/secret.txt", "/images/escape", "/images", "/"):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        assert resp.status in (400, 403, 404), path
        assert b"TOP-SECRET" not in body


def test_server_ranges_and_head(server, blob):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    cases = [
        ("bytes=10-19", 206, blob[10:20]),
        ("bytes=-5", 206, blob[-5:]),
        (f"bytes={len(blob) - 3}-", 206, blob[-3:]),
        (f"bytes={len(blob)}-", 416, None),
        ("bytes=0-1,5-6", 200, blob),
    ]
    for rng, status, expected in cases:
        conn.request("GET", "/images/disk.img", headers={"Range": rng})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == status, rng
        if expected is not None:
            assert body == expected
        else:
            assert resp.headers["Content-Range"] == f"bytes */{len(blob)}"
    conn.request("HEAD", "/images/disk.img")
    resp = conn.getresponse()
    assert resp.read() == b""
    assert int(resp.headers["Content-Length"]) == len(blob)
    conn.close()


# -- the agent, end to end: the CLI against the server --------------------------


def one_volume(url: str, digest: str) -> ConfigBuilder:
    b = ConfigBuilder().fast_retries(3)
    ds = b.datastore(url, "images")
    b.download_volume(b.content_tree(ds, "os.raw", digest, "raw", name="os"), 8 * MiB, name="os")
    return b


def test_a_file_replaced_between_attempts_ends_verified_with_the_new_bytes(tmp_path, root, server):
    """The agent is killed mid-download of last release's file, then the server gets the file the config names:
    the restarted agent's resume carries If-Range with the old file's ETag (kept beside the partial through the
    kill), the server answers 200 with the new file, and the blob ends LOADED with no digest mismatch on the way."""
    path = root / "images" / "os.raw"
    make_raw_image(path, 8, seed=22)  # what the server has at first
    right = make_raw_image(tmp_path / "right.raw", 8, seed=21)
    digest = sha256_file(right)
    data, cfg, log = tmp_path / "dev", tmp_path / "config.pb", tmp_path / "agent.log"
    ingest = data / "cas" / "ingest"
    with FaultProxy(f"127.0.0.1:{server.server_address[1]}") as proxy:
        stall = proxy.add(Rule("stall", path="os.raw", phase="body", at=4 * MiB, seconds=60, times=1))
        b = one_volume(proxy.url, digest)
        b.save(cfg)
        kill_at_partial(start_agent(data, cfg, log), data, digest, 4 * MiB, ready=lambda: stall.injected, log=log)
        held = (ingest / f"{digest}.partial").stat().st_size
        _key, etag = (ingest / f"{digest}.validator").read_text().split(" ", 1)
        replace(path, right.read_bytes())
        proc, gets = rerun_through(proxy, "os.raw", data, b, cfg)
    first = {k.lower(): v for k, v in gets[0].headers.items()}
    assert first["range"] == f"bytes={held}-" and first["if-range"] == etag and etag.startswith('"')
    assert [g.status for g in gets] == [200]  # the whole new file, in the resumed request itself
    assert resumed_from(proc.stderr) == [held]
    assert "digest mismatch" not in proc.stderr.lower()
    assert_volume_is(data, "os", right)
    assert sha256_file(data / "cas" / "blobs" / "sha256" / digest) == digest
    assert list(ingest.iterdir()) == []  # no partial, no validator


def test_a_complete_partial_left_by_a_crash_is_committed_after_a_416(tmp_path, root, server):
    image = make_raw_image(root / "images" / "os.raw", 4, seed=23)
    digest, size = sha256_file(image), image.stat().st_size
    b = one_volume(server.url, digest)
    data, cfg = tmp_path / "dev", tmp_path / "config.pb"
    killed = run_once(data, b, cfg, crash_at="blob.fetched")  # every byte in, not yet verified
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (data / "cas" / "ingest" / f"{digest}.validator").exists()
    proc = run_once(data, b, cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert server.requests[-1][2] == f"bytes={size}-" and if_range(server, -1) is not None
    assert server.statuses == [200, 416]
    assert_volume_is(data, "os", image)
    assert server.wait_idle() and server.bytes_served == size  # no byte fetched twice


# -- HTTPS --------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> dict[str, Path]:
    """A private CA and a server certificate for 127.0.0.1 signed by it."""
    d = tmp_path_factory.mktemp("tls")
    (d / "ca.ext").write_text(
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier=hash\n"
    )
    (d / "srv.ext").write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-new", *ec, "-keyout", "ca.key", "-out", "ca.csr", "-subj", "/CN=edgevol test CA", cwd=d)
    _openssl("x509", "-req", "-in", "ca.csr", "-signkey", "ca.key", "-days", "2",
             "-extfile", "ca.ext", "-out", "ca.pem", cwd=d)
    _openssl("req", "-new", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    _openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "srv.ext", "-out", "srv.pem", cwd=d)
    return {"ca": d / "ca.pem", "cert": d / "srv.pem", "key": d / "srv.key"}


@pytest.fixture
def tls_server(root, blob, tls_files) -> Iterator[RangeHTTPServer]:
    srv = serve(root, certfile=tls_files["cert"], keyfile=tls_files["key"])
    yield srv
    srv.shutdown()


def test_https_trusts_ca_from_ca_pems_only(tls_server, tls_files, blob, sink):
    port = tls_server.server_address[1]
    with HttpDatastore(f"127.0.0.1:{port}", "images", secure_default=True) as ds:
        with pytest.raises(PermanentError, match="certificate") as err:
            fetch(ds, "disk.img", sink)
        assert not err.value.retryable
    assert sink.offset == 0
    ca = tls_files["ca"].read_bytes()
    with HttpDatastore(f"127.0.0.1:{port}", "images", secure_default=True, ca_pems=[ca]) as ds:
        assert ds.url_for("disk.img").startswith("https://")
        tls_server.drop_after = 2 * MiB
        with pytest.raises(TransientError):
            fetch(ds, "disk.img", sink)
        fetch(ds, "disk.img", sink)
    assert sha(sink.content()) == sha(blob)


def test_https_redirect_to_http_is_refused(tls_server, server, tls_files, blob, sink):
    tls_server.redirects["/images/disk.img"] = f"{server.url}/images/disk.img"
    ca = tls_files["ca"].read_bytes()
    with HttpDatastore(tls_server.url, "images", secure_default=True, ca_pems=[ca]) as ds:
        with pytest.raises(PermanentError, match="redirect"):
            fetch(ds, "disk.img", sink)
    assert server.requests == []


def test_invalid_ca_pem_is_refused():
    with pytest.raises(ValueError, match="dsCertPEM"):
        HttpDatastore("h", secure_default=True, ca_pems=[b"not a certificate"])


# -- CLI ------------------------------------------------------------------------


def test_cli_serves_in_foreground_and_prints_url(root, blob, sink):
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgevol.tools.httpserve", str(root), "--port", "0"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with HttpDatastore(url, "images", secure_default=False) as ds:
            fetch(ds, "disk.img", sink)
        assert sha(sink.content()) == sha(blob)
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
