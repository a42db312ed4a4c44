"""Google Cloud Storage datastores against a real GCS server (fake-gcs-server), as EVE's downloader maps the
fields (lf-edge/eve pkg/pillar/cmd/downloader/syncop.go): fqdn = endpoint, dpath = bucket[/prefix],
password = service-account JSON key (empty: anonymous), URL = object name. The fault proxy sits in front for
the network faults; a SIGKILL mid-download must resume from the partial.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from edgevol.api import messages as m
from edgevol.device.datastores.base import BytesSink, ConfigError, PermanentError
from edgevol.device.datastores.gcs import GcsDatastore
from edgevol.device.datastores.ranged import PARALLEL_THRESHOLD, PART_SIZE
from edgevol.tools.faultproxy import FaultProxy, Rule
from tests.configs import ConfigBuilder, new_id, sha256_file
from tests.conftest import by_name, device_status, make_raw_image, open_guest, start_agent
from tests.datastore_cases import (
    assert_a_replaced_object_fails_the_read,
    assert_resumed,
    assert_started_over,
    assert_volume_is,
    kill_at_partial,
    replaced_between_attempts,
    rerun_through,
    run_once,
)
from tests.tls_certs import private_ca
from tests.gcs_fixture import RunningGcs, gcs_server, start_gcs  # noqa: F401  (fixture)

MiB = 1 << 20
MEDIA = r"/download/storage/v1/b/images/o/vm%2F"  # the media GETs of objects under images/vm (not metadata)


class RefusingTokenEndpoint:
    """A mock of Google's OAuth 2.0 token endpoint, which cannot run on one machine: it turns every grant down
    the way Google does for a revoked or unknown key (400 ``invalid_grant``) and counts the grants it saw.

    fake-gcs-server accepts any credentials, so a refusal can only come from the token exchange.
    """

    def __init__(self) -> None:
        grants: list[str] = []
        self.grants = grants

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                grants.append(parse_qs(body).get("grant_type", [""])[0])
                answer = json.dumps({"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer.encode())

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def service_account_key(token_uri: str) -> tuple[str, str]:
    """A well-formed service-account JSON key with a fresh RSA key; returns (the JSON, its private key PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    key = {"type": "service_account", "project_id": "edgevol-test", "private_key_id": "0123abcd",
           "private_key": pem, "client_email": "edgevol@edgevol-test.iam.gserviceaccount.com", "client_id": "1",
           "token_uri": token_uri}
    return json.dumps(key), pem


def gcs_datastore(b: ConfigBuilder, endpoint: str, dpath: str = "images/vm", password: str = "") -> str:
    ds = b.cfg.datastores.add(id=new_id(), dType=m.DsType.DsGoogleStorage, fqdn=endpoint, dpath=dpath,
                              password=password)
    return str(ds.id)


def private_key_lines(pem: str) -> list[str]:
    """The base64 lines of a PEM private key: any one of them in an output would be a leak."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def test_volumes_from_gcs_content_and_clear_errors(tmp_path, gcs_server: RunningGcs) -> None:  # noqa: F811
    image = make_raw_image(tmp_path / "os.raw", 4, seed=81)
    gcs_server.put("images", "vm/os.raw", image)
    token = RefusingTokenEndpoint()
    try:
        key_json, pem = service_account_key(token.uri)
        malformed = key_json[: len(key_json) // 2]  # a key cut short in the controller: not JSON any more
        b = ConfigBuilder()
        public = gcs_datastore(b, gcs_server.endpoint)
        refused_ds = gcs_datastore(b, gcs_server.endpoint, password=key_json)
        malformed_ds = gcs_datastore(b, gcs_server.endpoint, password=malformed)
        ct = b.content_tree(public, "os.raw", sha256_file(image), "raw", name="os")
        b.download_volume(ct, 8 * MiB, name="root")
        missing = b.content_tree(public, "nothing-here.raw", hashlib.sha256(b"x").hexdigest(), "raw", name="missing")
        b.download_volume(missing, 8 * MiB, name="vol-missing")
        denied = b.content_tree(refused_ds, "os.raw", hashlib.sha256(b"y").hexdigest(), "raw", name="denied")
        b.download_volume(denied, 8 * MiB, name="vol-denied")
        bad_key = b.content_tree(malformed_ds, "os.raw", hashlib.sha256(b"z").hexdigest(), "raw", name="bad-key")
        b.download_volume(bad_key, 8 * MiB, name="vol-bad-key")
        data, cfg = tmp_path / "dev", tmp_path / "config.pb"
        proc = run_once(data, b, cfg)
    finally:
        token.stop()
    assert proc.returncode == 1, proc.stderr[-3000:]
    st = device_status(data)
    root = by_name(st["volumes"], "root")
    assert root["state"] == "CREATED_VOLUME"
    with open_guest(root["path"]) as f:
        assert f.read(4 * MiB) == image.read_bytes()
    nf = by_name(st["content_trees"], "missing")["error"]["description"]
    assert "gs://images/vm/nothing-here.raw" in nf and "not found" in nf, nf
    # the key was presented: the service account asked the token endpoint, which turned it down
    assert token.grants and set(token.grants) == {"urn:ietf:params:oauth:grant-type:jwt-bearer"}, token.grants
    refused = by_name(st["content_trees"], "denied")["error"]["description"]
    assert "refused the credentials" in refused and "service-account JSON key" in refused, refused
    assert "invalid_grant" in refused, refused
    unusable = by_name(st["content_trees"], "bad-key")["error"]["description"]
    assert "not a usable service-account JSON key" in unusable and "not valid JSON" in unusable, unusable
    for vol in ("vol-missing", "vol-denied", "vol-bad-key"):
        assert by_name(st["volumes"], vol)["state"] != "CREATED_VOLUME"
    shown = json.dumps(st) + proc.stdout + proc.stderr
    assert all(line not in shown for line in private_key_lines(pem)), "the private key leaked"
    assert "BEGIN PRIVATE KEY" not in shown and "0123abcd" not in shown


def test_gcs_download_survives_drops_corruption_and_a_kill(tmp_path, gcs_server: RunningGcs) -> None:  # noqa: F811
    image = make_raw_image(tmp_path / "big.raw", 24, seed=82)
    gcs_server.put("images", "vm/big.raw", image)
    media = MEDIA + r"big\.raw"
    proxy = FaultProxy(f"127.0.0.1:{gcs_server.port}", seed=8)
    proxy.start()
    try:
        # the first attempt stalls at 8 MiB (the agent is killed there), then a drop and a corruption; the rules
        # only match media GETs, since metadata answers have bodies too
        stall = proxy.add(Rule("stall", path=media, phase="body", at=8 * MiB, seconds=60, times=1))
        drop = proxy.add(Rule("drop", path=media, at=12 * MiB, times=1))
        corrupt = proxy.add(Rule("corrupt", path=media, at=20 * MiB, times=1))
        b = ConfigBuilder().fast_retries(5)
        ds = gcs_datastore(b, f"http://127.0.0.1:{proxy.port}")
        ct = b.content_tree(ds, "big.raw", sha256_file(image), "raw", name="big")
        b.download_volume(ct, 32 * MiB, name="big")
        data, cfg = tmp_path / "dev", tmp_path / "config.pb"
        b.save(cfg)
        log = tmp_path / "agent.log"
        # the stalled attempt has written its first 8 MiB to the partial
        kill_at_partial(start_agent(data, cfg, log), data, sha256_file(image), 8 * MiB,
                        ready=lambda: stall.injected, log=log)
        proc, after_restart = rerun_through(proxy, media, data, b, cfg)
    finally:
        proxy.stop()
    # the restarted agent asked GCS for the rest only: a ranged GET from where the partial ended
    assert_resumed(proc.stderr, 8 * MiB, first_get=after_restart[0].headers)
    assert drop.injected == 1 and corrupt.injected == 1
    assert_volume_is(data, "big", image)


def test_parallel_ranges_and_stored_bytes_of_a_gzip_object(gcs_server: RunningGcs) -> None:  # noqa: F811
    """Ranges of a big object read on several connections at once land in order; a gzip-encoded object arrives
    as stored (GCS would decompress it for a client that does not accept gzip, and then ignore ranges)."""
    big = random.Random(83).randbytes(PARALLEL_THRESHOLD + PART_SIZE // 2)  # just big enough to be read in parts
    gcs_server.put("images", "vm/parallel.raw", big)
    packed = gzip.compress(random.Random(84).randbytes(2 * MiB) + bytes(4 * MiB))
    gcs_server.put("images", "vm/packed.raw.gz", packed, content_encoding="gzip")
    with FaultProxy(f"127.0.0.1:{gcs_server.port}", seed=9) as proxy:
        # Each answer waits half a second for its headers: parts read in parallel overlap in time however
        # loaded the machine is, parts read one after another never do (a fast loopback read may not).
        proxy.add(Rule("stall", path=r"parallel\.raw", methods=frozenset({"GET"}), phase="response", seconds=0.5))
        ds = GcsDatastore(f"http://127.0.0.1:{proxy.port}", "images/vm")
        try:
            sink = BytesSink()
            ds.fetch("parallel.raw", sink, streams=4)
            assert sink.offset == len(big) and hashlib.sha256(sink.getvalue()).digest() == hashlib.sha256(big).digest()
            sink = BytesSink()
            sink.write(packed[:1000])  # a partial: the rest comes as a range of the stored bytes
            ds.fetch("packed.raw.gz", sink)
            assert sink.getvalue() == packed
        finally:
            ds.close()
        reads = proxy.requests_for(MEDIA + r"parallel\.raw", "GET")
        packed_reads = proxy.requests_for(MEDIA + r"packed\.raw\.gz", "GET")
    starts = sorted(int(s.headers["Range"][6:].split("-")[0]) for s in reads)
    # one ranged GET per part
    assert starts == list(range(0, len(big), PART_SIZE)), [(s.path, s.headers.get("Range")) for s in proxy.requests]
    overlapping = any(a.started < b.ended and b.started < a.ended  # type: ignore[operator]
                      for i, a in enumerate(reads) for b in reads[i + 1:])
    assert overlapping, "the parts were read one after another"
    assert [s.headers.get("Range") for s in packed_reads] == [f"bytes=1000-{len(packed) - 1}"]
    assert all(s.status == 206 for s in packed_reads)


def test_a_private_ca_in_dscertpem_is_trusted_and_its_bundle_removed(tmp_path) -> None:
    """dsCertPEM lets the datastore verify an endpoint signed by a private CA; without it TLS verification fails,
    a permanent error (waiting does not fix a certificate)."""
    ca_pem, cert, key = private_ca(tmp_path)
    server = start_gcs(tmp_path / "tls-gcs", cert=cert, key=key, ca_file=tmp_path / "ca.pem")
    try:
        server.put("images", "vm/os.raw", b"tls-bytes" * 1000, verify=str(tmp_path / "ca.pem"))
        ds = GcsDatastore(server.endpoint, "images/vm", ca_pems=[ca_pem])
        bundle = ds._ca_file
        try:
            assert bundle and Path(bundle).is_file() and (os.stat(bundle).st_mode & 0o077) == 0
            sink = BytesSink()
            ds.fetch("os.raw", sink)
            assert sink.getvalue() == b"tls-bytes" * 1000
        finally:
            ds.close()
        assert not Path(bundle).exists()
        untrusting = GcsDatastore(server.endpoint, "images/vm")
        try:
            with pytest.raises(PermanentError, match="TLS certificate verification failed") as err:
                untrusting.fetch("os.raw", BytesSink())
        finally:
            untrusting.close()
        assert "gs://images/vm/os.raw" in str(err.value)
    finally:
        server.stop()


def test_unusable_settings_are_config_errors_that_never_quote_the_key() -> None:
    key_json, pem = service_account_key("https://oauth2.googleapis.com/token")
    key = json.loads(key_json)
    secret = private_key_lines(pem)
    cases = {
        "plain HTTP": ("http://gcs.example.net", "images", ""),
        "names its bucket": ("", "", ""),
        "not a JSON object": ("", "images", json.dumps([key])),
        '"type" is not "service_account"': ("", "images", json.dumps({**key, "type": "authorized_user"})),
        "lacks client_email": ("", "images", json.dumps({k: v for k, v in key.items() if k != "client_email"})),
        "token_uri is not an https URL": ("", "images", json.dumps({**key, "token_uri": "http://evil.example/t"})),
        "private_key cannot be loaded": ("", "images", json.dumps({**key, "private_key": pem[:300]})),
        "not valid JSON": ("", "images", key_json[:-1]),
    }
    for expected, (fqdn, dpath, password) in cases.items():
        with pytest.raises(ConfigError) as err:
            GcsDatastore(fqdn, dpath, password=password)
        text = str(err.value)
        assert expected in text, (expected, text)
        assert not any(line in text for line in secret) and "BEGIN PRIVATE KEY" not in text, text
        assert err.value.__cause__ is None or "PRIVATE KEY" not in str(err.value.__cause__)
    ds = GcsDatastore("", "images/vm", password=key_json)  # a good key for Google's endpoint opens offline
    try:
        assert ds.describe("os.raw") == "gs://images/vm/os.raw"
    finally:
        ds.close()




def test_a_ranged_read_answered_from_byte_zero_still_yields_the_range(gcs_server: RunningGcs) -> None:  # noqa: F811
    """Something in between that drops Range (the fault proxy's ignore_range) makes the store send the whole
    object: the read skips what it did not ask for (``ranged.skip_bytes``), so a resume never writes the
    object's first bytes at the partial's end."""
    blob = os.urandom(3 * 1024 * 1024 + 5)
    gcs_server.put("images", "vm/whole.bin", blob)
    with FaultProxy(f"127.0.0.1:{gcs_server.port}", seed=10) as proxy:
        ignored = proxy.add(Rule("ignore_range", path="/download/", methods=frozenset({"GET"})))
        ds = GcsDatastore(f"http://127.0.0.1:{proxy.port}", "images/vm")
        try:
            assert b"".join(ds.read("whole.bin", 1024 * 1024 + 3, len(blob), None)) == blob[1024 * 1024 + 3:]
            sink = BytesSink()
            sink.write(blob[:2 * 1024 * 1024])
            ds.fetch("whole.bin", sink)
            assert sink.getvalue() == blob
        finally:
            ds.close()
    assert ignored.injected == 2


def test_a_gcs_object_replaced_between_attempts_ends_verified(tmp_path, gcs_server: RunningGcs) -> None:  # noqa: F811
    """Killed mid-download of the object's old generation; the bucket then gets the version the config names:
    the generation kept beside the partial is not the object's any more, so the partial goes and the new
    object comes whole."""
    old = make_raw_image(tmp_path / "old.raw", 8, seed=86)
    new = make_raw_image(tmp_path / "new.raw", 8, seed=87)
    gcs_server.put("images", "vm/swap.raw", old)
    media = MEDIA + r"swap\.raw"
    with FaultProxy(f"127.0.0.1:{gcs_server.port}", seed=13) as proxy:
        stall = proxy.add(Rule("stall", path=media, phase="body", at=4 * MiB, seconds=60, times=1))
        b = ConfigBuilder().fast_retries(3)
        ds = gcs_datastore(b, f"http://127.0.0.1:{proxy.port}")
        b.download_volume(b.content_tree(ds, "swap.raw", sha256_file(new), "raw", name="swap"), 8 * MiB,
                          name="swap")
        data, proc, gets = replaced_between_attempts(
            tmp_path, b, sha256_file(new), 4 * MiB, ready=lambda: stall.injected,
            replace=lambda: gcs_server.put("images", "vm/swap.raw", new),
            rerun=lambda data, cfg: rerun_through(proxy, media, data, b, cfg))
    assert_started_over(proc.stderr, 4 * MiB, first_get=gets[0].headers)
    assert_volume_is(data, "swap", new)


def test_a_gcs_object_replaced_during_a_read_fails_it(gcs_server: RunningGcs) -> None:  # noqa: F811
    """Media GETs ask for the generation metadata named (``ifGenerationMatch``, which real GCS answers with 412
    when it no longer matches). fake-gcs-server ignores that parameter on downloads, so the answer's own
    ``x-goog-generation`` is checked as well: either way the read fails instead of returning the new bytes."""
    gcs_server.put("images", "vm/moving.bin", b"first version " * 1000)
    with FaultProxy(f"127.0.0.1:{gcs_server.port}", seed=14) as proxy:
        ds = GcsDatastore(f"http://127.0.0.1:{proxy.port}", "images/vm")
        try:
            generation = ds.stat("moving.bin").validator
            assert_a_replaced_object_fails_the_read(
                ds, "moving.bin", lambda: gcs_server.put("images", "vm/moving.bin", b"second version " * 1000))
        finally:
            ds.close()
        media = proxy.requests_for(MEDIA + r"moving\.bin", "GET")
    assert f"ifGenerationMatch={generation}" in media[0].path and media[0].status == 206
