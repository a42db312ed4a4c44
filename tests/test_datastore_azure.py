"""Azure Blob datastores against a real Blob service (Azurite), as EVE's downloader maps the fields
(lf-edge/eve pkg/pillar/cmd/downloader/syncop.go): fqdn = blob service URL, dpath = container[/prefix],
apiKey = account name, password = account key or SAS token, URL = blob name. The fault proxy sits in
front for the network faults; a SIGKILL mid-download must resume from the partial.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from edgevol.api import messages as m
from edgevol.device.datastores.azure import AzureBlobDatastore
from edgevol.device.datastores.base import BytesSink, ConfigError, NotFoundError, PermanentError, TransientError
from edgevol.device.datastores.ranged import PARALLEL_THRESHOLD
from edgevol.tools.faultproxy import FaultProxy, Rule
from tests.tls_certs import private_ca
from tests.azure_fixture import ACCOUNT, ACCOUNT_KEY, RunningAzurite, azurite  # noqa: F401  (fixture)
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

MiB = 1 << 20
WRONG_KEY = "d3Jvbmcta2V5LWZvci1lZGdldm9sdGVzdC1hY2NvdW50"  # valid base64, so the server itself refuses it


def azure_datastore(b: ConfigBuilder, url: str, dpath: str = "images/vm", *, account: str = ACCOUNT,
                    password: str = ACCOUNT_KEY) -> str:
    ds = b.cfg.datastores.add(id=new_id(), dType=m.DsType.DsAzureBlob, fqdn=url, dpath=dpath, apiKey=account,
                              password=password)
    return str(ds.id)


def sig_of(sas: str) -> str:
    return dict(p.split("=", 1) for p in sas.split("&"))["sig"]


def test_volumes_from_azure_with_a_key_or_a_sas_and_clear_errors(tmp_path, azurite: RunningAzurite) -> None:  # noqa: F811
    image = make_raw_image(tmp_path / "os.raw", 4, seed=61)
    azurite.put("images", "vm/os.raw", image)
    data_image = make_raw_image(tmp_path / "data.raw", 2, seed=62)
    azurite.put("images", "vm/data.raw", data_image)
    sas = azurite.container_sas("images")
    b = ConfigBuilder()
    good = azure_datastore(b, azurite.account_url)
    wrong = azure_datastore(b, azurite.account_url, password=WRONG_KEY)
    by_sas = azure_datastore(b, azurite.account_url, account="", password="?" + sas)
    ct = b.content_tree(good, "os.raw", sha256_file(image), "raw", name="os")
    b.download_volume(ct, 8 * MiB, name="root")
    sas_ct = b.content_tree(by_sas, "data.raw", sha256_file(data_image), "raw", name="data")
    b.download_volume(sas_ct, 4 * MiB, name="vol-data")
    missing = b.content_tree(good, "nothing-here.raw", hashlib.sha256(b"x").hexdigest(), "raw", name="missing")
    b.download_volume(missing, 8 * MiB, name="vol-missing")
    denied = b.content_tree(wrong, "os2.raw", hashlib.sha256(b"y").hexdigest(), "raw", name="denied")
    b.download_volume(denied, 8 * MiB, name="vol-denied")
    data, cfg = tmp_path / "dev", tmp_path / "config.pb"
    proc = run_once(data, b, cfg)
    assert proc.returncode == 1, proc.stderr[-3000:]  # two content trees failed, as they must
    st = device_status(data)
    for name, img in (("root", image), ("vol-data", data_image)):
        vol = by_name(st["volumes"], name)
        assert vol["state"] == "CREATED_VOLUME", vol
        size = img.stat().st_size
        with open_guest(vol["path"]) as f:
            assert f.read(size) == img.read_bytes()
    nf = by_name(st["content_trees"], "missing")["error"]["description"]
    assert "azure://images/vm/nothing-here.raw" in nf and "not found" in nf and "BlobNotFound" in nf, nf
    refused = by_name(st["content_trees"], "denied")["error"]["description"]
    assert "refused the credentials" in refused and "account key or SAS token" in refused, refused
    everything = json.dumps(st) + proc.stdout + proc.stderr
    for secret in (ACCOUNT_KEY, WRONG_KEY, sig_of(sas)):
        assert secret not in everything


def test_azure_download_survives_a_kill_drops_and_corruption(tmp_path, azurite: RunningAzurite) -> None:  # noqa: F811
    image = make_raw_image(tmp_path / "big.raw", 24, seed=63)
    azurite.put("images", "vm/big.raw", image)
    sha = sha256_file(image)
    proxy = FaultProxy(f"127.0.0.1:{azurite.port}", seed=11)
    proxy.start()
    try:
        # The SDK reads a range as 4 MiB GETs: the third one (bytes 8-12 MiB) stalls before its first byte,
        # so the agent is killed with exactly 8 MiB in its partial.
        stall = proxy.add(Rule("stall", path="big.raw", methods=frozenset({"GET"}), phase="body", at=0, every=3,
                               times=1, seconds=60))
        b = ConfigBuilder().fast_retries(5)
        ds = azure_datastore(b, f"http://127.0.0.1:{proxy.port}/{ACCOUNT}")
        ct = b.content_tree(ds, "big.raw", sha, "raw", name="big")
        b.download_volume(ct, 32 * MiB, name="big")
        data, cfg = tmp_path / "dev", tmp_path / "config.pb"
        b.save(cfg)
        log = tmp_path / "agent.log"
        # the stalled attempt has written its first 8 MiB to the partial
        kill_at_partial(start_agent(data, cfg, log), data, sha, 8 * MiB, ready=lambda: stall.injected, log=log)
        # the restarted agent meets a connection reset in its first GET and a flipped byte later
        drop = proxy.add(Rule("drop", path="big.raw", methods=frozenset({"GET"}), at=1 * MiB, times=1))
        corrupt = proxy.add(Rule("corrupt", path="big.raw", methods=frozenset({"GET"}), every=3, at=4096, times=1))
        proc, after_restart = rerun_through(proxy, "big.raw", data, b, cfg)
    finally:
        proxy.stop()
    # the restarted agent asked for the rest only: a ranged GET from where the partial ended
    assert_resumed(proc.stderr, 8 * MiB, first_get=after_restart[0].headers)
    assert drop.injected == 1 and corrupt.injected == 1
    assert "drop" in after_restart[0].faults
    assert_volume_is(data, "big", image)


def test_the_datastore_reads_ranges_and_classifies_failures_without_leaking_credentials(
        tmp_path, azurite: RunningAzurite) -> None:  # noqa: F811
    blob = os.urandom(3 * MiB + 17)
    azurite.put("plain", "pre/fix/a.bin", blob)
    ds = AzureBlobDatastore(azurite.account_url, "plain/pre/fix", api_key=ACCOUNT, password=ACCOUNT_KEY,
                            ca_pems=[private_ca(tmp_path)[0]])  # not used over http, but written and removed
    ca_file = Path(ds._ca_file)
    try:
        assert ca_file.exists() and ds.stat("a.bin").size == len(blob)
        assert b"".join(ds.read("a.bin", MiB + 5, 2 * MiB + 9, None)) == blob[MiB + 5:2 * MiB + 9]
        sink = BytesSink()
        sink.write(blob[:1000])
        ds.fetch("a.bin", sink)  # resumes from the sink's offset
        assert sink.getvalue() == blob
        with pytest.raises(NotFoundError, match="azure://plain/pre/fix/b.bin at http://127.0.0.1:.*BlobNotFound"):
            ds.stat("b.bin")
    finally:
        ds.close()
    assert not ca_file.exists()  # the CA bundle lives as long as the client

    sas = azurite.container_sas("plain")
    with FaultProxy(f"127.0.0.1:{azurite.port}", seed=3) as proxy:
        proxy.add(Rule("5xx", path="a.bin", status=503, times=1))
        proxy.add(Rule("429", path="a.bin", seconds=7, times=1))
        ds = AzureBlobDatastore(f"http://127.0.0.1:{proxy.port}/{ACCOUNT}", "plain/pre/fix", password=sas)
        try:
            with pytest.raises(TransientError, match="503"):
                ds.stat("a.bin")
            with pytest.raises(TransientError) as throttled:
                ds.stat("a.bin")
            assert throttled.value.retry_after == 7
            assert len(proxy.requests_for("a.bin")) == 2  # the SDK retried neither: the downloader does
            assert ds.stat("a.bin").size == len(blob)  # the SAS token is a credential of its own
            big = os.urandom(PARALLEL_THRESHOLD + 3 * MiB + 5)
            azurite.put("plain", "pre/fix/big.bin", big)
            sink = BytesSink()
            sink.write(big[:2 * MiB])
            ds.fetch("big.bin", sink, streams=4)  # parts read at once over one client, delivered in order
            assert sink.getvalue() == big
            gets = proxy.requests_for("big.bin", "GET")
            assert any(a.started < b.started < (a.ended or 0) for a in gets for b in gets), "no reads overlapped"
        finally:
            ds.close()

    closed = AzureBlobDatastore(f"http://127.0.0.1:{proxy.port}/{ACCOUNT}", "plain", password="?" + sas,
                                connect_timeout=2)
    try:
        with pytest.raises(TransientError) as refused:
            list(closed.read("a.bin", 0, 10, None))
        assert sig_of(sas) not in str(refused.value) and refused.value.__cause__ is None
    finally:
        closed.close()
    with pytest.raises(ConfigError, match="plain HTTP"):
        AzureBlobDatastore("http://blob.example.net/acct", "c", api_key="acct", password=ACCOUNT_KEY)
    with pytest.raises(ConfigError, match="container"):
        AzureBlobDatastore(azurite.account_url, "/", api_key=ACCOUNT, password=ACCOUNT_KEY)
    with pytest.raises(ConfigError) as in_url:
        AzureBlobDatastore(f"https://acct.blob.core.windows.net/?{sas}", "c")
    assert sig_of(sas) not in str(in_url.value)
    with pytest.raises(PermanentError, match="cannot sign"):
        AzureBlobDatastore(azurite.account_url, "plain", api_key=ACCOUNT, password="not base64!").stat("x")


def test_an_azure_blob_replaced_between_attempts_ends_verified(tmp_path, azurite: RunningAzurite) -> None:  # noqa: F811
    """Killed mid-download of the blob's old version; the container then gets the version the config names: the
    ETag kept beside the partial no longer matches the blob's, so the partial goes and the new blob comes whole."""
    old = make_raw_image(tmp_path / "old.raw", 8, seed=66)
    new = make_raw_image(tmp_path / "new.raw", 8, seed=67)
    azurite.put("images", "vm/swap.raw", old)
    with FaultProxy(f"127.0.0.1:{azurite.port}", seed=12) as proxy:
        # the SDK reads 4 MiB per GET: the second stalls before its first byte, with 4 MiB in the partial
        stall = proxy.add(Rule("stall", path="swap.raw", methods=frozenset({"GET"}), phase="body", at=0, every=2,
                               times=1, seconds=60))
        b = ConfigBuilder().fast_retries(3)
        ds = azure_datastore(b, f"http://127.0.0.1:{proxy.port}/{ACCOUNT}")
        b.download_volume(b.content_tree(ds, "swap.raw", sha256_file(new), "raw", name="swap"), 8 * MiB,
                          name="swap")
        data, proc, gets = replaced_between_attempts(
            tmp_path, b, sha256_file(new), 4 * MiB, ready=lambda: stall.injected,
            replace=lambda: azurite.put("images", "vm/swap.raw", new),
            rerun=lambda data, cfg: rerun_through(proxy, "swap.raw", data, b, cfg))
    assert_started_over(proc.stderr, 4 * MiB, first_get=gets[0].headers)
    assert all("if-match" in {k.lower() for k in g.headers} for g in gets)  # every GET is of one version
    assert_volume_is(data, "swap", new)


def test_an_azure_blob_replaced_during_a_read_fails_it(azurite: RunningAzurite) -> None:  # noqa: F811
    """Ranged GETs carry If-Match with the blob's ETag: Azurite answers 412 ConditionNotMet for a replaced blob."""
    azurite.put("plain", "moving.bin", b"first version " * 1000)
    ds = AzureBlobDatastore(azurite.account_url, "plain", api_key=ACCOUNT, password=ACCOUNT_KEY)
    try:
        assert_a_replaced_object_fails_the_read(
            ds, "moving.bin", lambda: azurite.put("plain", "moving.bin", b"second version " * 1000))
    finally:
        ds.close()
