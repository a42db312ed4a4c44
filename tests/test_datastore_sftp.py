"""SFTP datastores against a real OpenSSH sshd on loopback, as EVE's downloader maps the fields
(lf-edge/eve pkg/pillar/cmd/downloader/syncop.go): fqdn = host:port, dpath = directory, apiKey = user,
password = password, URL = file, joined as EVE's zedUpload does (path.Join(dpath, URL)). The TCP fault
proxy sits in front for network faults (drop, a flipped byte that fails SSH's MAC check, a stall), and
a SIGKILL mid-download must resume from the partial.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from edgevol.api import messages as m
from edgevol.device.datastores.base import BytesSink, ConfigError, TransientError
from edgevol.device.datastores.ranged import ObjectChanged
from edgevol.device.datastores.sftp import SftpDatastore
from edgevol.tools.tcpfaultproxy import TcpFaultProxy
from tests.configs import ConfigBuilder, new_id, sha256_file
from tests.conftest import by_name, device_status, make_raw_image, open_guest, start_agent
from tests.datastore_cases import (
    assert_a_replaced_object_fails_the_read,
    assert_resumed,
    assert_started_over,
    assert_volume_is,
    kill_at_partial,
    replaced_between_attempts,
    run_once,
)
from tests.sftp_fixture import RunningSftp, sftp_server  # noqa: F401  (fixture)

MiB = 1 << 20


def sftp_datastore(b: ConfigBuilder, server: RunningSftp, *, fqdn: str | None = None, dpath: str = "images",
                   password: str | None = None) -> str:
    ds = b.cfg.datastores.add(id=new_id(), dType=m.DsType.DsSFTP, fqdn=fqdn or server.fqdn, dpath=dpath,
                              apiKey=server.user, password=server.password if password is None else password)
    return str(ds.id)


def volume_bytes(volume: dict, size: int) -> bytes:
    with open_guest(volume["path"]) as f:
        return f.read(size)


def test_volumes_from_sftp_content_and_clear_errors(tmp_path, sftp_server: RunningSftp) -> None:  # noqa: F811
    image = make_raw_image(tmp_path / "os.raw", 4, seed=91)
    elsewhere = make_raw_image(tmp_path / "abs.raw", 2, seed=93)
    lead = make_raw_image(tmp_path / "lead.raw", 2, seed=94)
    sftp_server.put("images/os.raw", image)
    sftp_server.put("srv/elsewhere/abs.raw", elsewhere)
    sftp_server.put("images/lead.raw", lead)
    sftp_server.put("images/secret.raw", b"root only", mode=0o600)
    b = ConfigBuilder()
    good = sftp_datastore(b, sftp_server)
    flat = sftp_datastore(b, sftp_server, dpath="")  # no directory: the URL is the path
    wrong = sftp_datastore(b, sftp_server, password="not-the-password")
    b.download_volume(b.content_tree(good, "os.raw", sha256_file(image), "raw", name="os"), 8 * MiB, name="root")
    # an absolute URL on a datastore without dpath is absolute (inside sshd's chroot here)
    b.download_volume(b.content_tree(flat, "/srv/elsewhere/abs.raw", sha256_file(elsewhere), "raw", name="abs"),
                      8 * MiB, name="vol-abs")
    # under a dpath a leading '/' does not escape it: EVE's path.Join("images", "/lead.raw") is images/lead.raw
    b.download_volume(b.content_tree(good, "/lead.raw", sha256_file(lead), "raw", name="lead"), 8 * MiB,
                      name="vol-lead")
    missing = b.content_tree(good, "nothing-here.raw", hashlib.sha256(b"x").hexdigest(), "raw", name="missing")
    b.download_volume(missing, 8 * MiB, name="vol-missing")
    denied = b.content_tree(wrong, "os2.raw", hashlib.sha256(b"y").hexdigest(), "raw", name="denied")
    b.download_volume(denied, 8 * MiB, name="vol-denied")
    secret = b.content_tree(good, "secret.raw", hashlib.sha256(b"z").hexdigest(), "raw", name="secret")
    b.download_volume(secret, 8 * MiB, name="vol-secret")
    data, cfg = tmp_path / "dev", tmp_path / "config.pb"
    proc = run_once(data, b, cfg)
    assert proc.returncode == 1, proc.stderr[-3000:]
    st = device_status(data)
    for vol, img in (("root", image), ("vol-abs", elsewhere), ("vol-lead", lead)):
        volume = by_name(st["volumes"], vol)
        assert volume["state"] == "CREATED_VOLUME", volume
        assert volume_bytes(volume, img.stat().st_size) == img.read_bytes(), vol
    nf = by_name(st["content_trees"], "missing")["error"]["description"]
    assert f"sftp://{sftp_server.user}@{sftp_server.fqdn}/" in nf and "images/nothing-here.raw" in nf, nf
    assert "not found" in nf, nf
    refused = by_name(st["content_trees"], "denied")["error"]["description"]
    assert "refused the credentials" in refused and "apiKey" in refused and "password" in refused, refused
    forbidden = by_name(st["content_trees"], "secret")["error"]["description"]
    assert "images/secret.raw" in forbidden and "permission denied" in forbidden, forbidden
    for text in (json.dumps(st), proc.stdout, proc.stderr):
        assert sftp_server.password not in text and "not-the-password" not in text
    # the host key is accepted (EVE checks none) and its fingerprint logged once per datastore
    assert proc.stderr.count("sftp host key accepted") == 3, proc.stderr[-3000:]


def test_sftp_download_survives_a_kill_drops_and_corruption(tmp_path, sftp_server: RunningSftp) -> None:  # noqa: F811
    image = make_raw_image(tmp_path / "big.raw", 24, seed=92)
    sftp_server.put("images/big.raw", image)
    sha = sha256_file(image)
    proxy = TcpFaultProxy(f"127.0.0.1:{sftp_server.port}", seed=7).start()
    try:
        # The first attempt stalls after 9 MiB of SSH stream (a little under 9 MiB of file): the agent is
        # killed there. Offsets count bytes per connection.
        stall = proxy.add("stall", 9 * MiB, seconds=60)
        b = ConfigBuilder().fast_retries(5)
        ds = sftp_datastore(b, sftp_server, fqdn=f"127.0.0.1:{proxy.port}")
        b.download_volume(b.content_tree(ds, "big.raw", sha, "raw", name="big"), 32 * MiB, name="big")
        data, cfg = tmp_path / "dev", tmp_path / "config.pb"
        b.save(cfg)
        log = tmp_path / "agent.log"
        # the stalled attempt has written its first 8 MiB to the partial
        kill_at_partial(start_agent(data, cfg, log), data, sha, 8 * MiB, ready=lambda: stall.injected, log=log)
        # The restarted agent's connection drops after 3 MiB; its next one gets a flipped byte at 5 MiB
        # (the MAC check fails, the client drops it); the one after that finishes.
        drop = proxy.add("drop", 3 * MiB)
        corrupt = proxy.add("corrupt", 5 * MiB)
        before = proxy.connections
        proc = run_once(data, b, cfg)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        proxy.stop()
    assert_resumed(proc.stderr, 8 * MiB)  # SFTP has no ranged GET to look at: the log says where it began
    assert stall.injected == 1 and drop.injected == 1 and corrupt.injected == 1
    assert proxy.connections - before == 3, proc.stderr[-3000:]  # one per fault, then the one that finished
    assert_volume_is(data, "big", image)


def test_a_stall_times_out_and_the_next_attempt_reconnects(tmp_path, sftp_server: RunningSftp) -> None:  # noqa: F811
    data = make_raw_image(tmp_path / "small.raw", 4, seed=95).read_bytes()
    sftp_server.put("images/small.raw", data)
    with TcpFaultProxy(f"127.0.0.1:{sftp_server.port}") as proxy:
        proxy.add("stall", 5 * MiB // 2, seconds=30)
        ds = SftpDatastore(f"127.0.0.1:{proxy.port}", "images", api_key=sftp_server.user,
                           password=sftp_server.password, read_timeout=1.0)
        try:
            sink = BytesSink()
            with pytest.raises(TransientError, match="sent nothing for 1s") as err:
                ds.fetch("small.raw", sink)
            assert "/~/images/small.raw" in str(err.value) and sftp_server.password not in str(err.value)
            assert 0 < sink.offset < 3 * MiB  # what came before the stall (whole MiB chunks) is kept
            ds.fetch("small.raw", sink)  # a new connection, from where the stalled one left off
            assert sink.getvalue() == data and proxy.connections == 2
            # concurrent downloads share the connection, each on its own SFTP channel
            sinks = [BytesSink() for _ in range(3)]
            threads = [threading.Thread(target=ds.fetch, args=("small.raw", s)) for s in sinks]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert all(s.getvalue() == data for s in sinks) and proxy.connections == 2
        finally:
            ds.close()


@pytest.mark.parametrize(("fqdn", "dpath", "url", "path"), [
    ("127.0.0.1:2222", "images", "os.raw", "sftp://u@127.0.0.1:2222/~/images/os.raw"),
    ("127.0.0.1", "/srv/images", "vm/os.raw", "sftp://u@127.0.0.1:22/srv/images/vm/os.raw"),
    ("sftp://[::1]:2222/", "", "/srv/os.raw", "sftp://u@[::1]:2222/srv/os.raw"),
    ("host.example:2222", "images/./", "/os.raw", "sftp://u@host.example:2222/~/images/os.raw"),
])
def test_sftp_paths_are_joined_as_eve_joins_them(fqdn: str, dpath: str, url: str, path: str) -> None:
    assert SftpDatastore(fqdn, dpath, api_key="u", password="pw").describe(url) == path


def test_sftp_refuses_climbing_paths_and_unusable_addresses() -> None:
    ds = SftpDatastore("127.0.0.1:2222", "images", api_key="u", password="pw")
    with pytest.raises(ConfigError, match=r"'\.\.'"):
        ds.describe("../etc/shadow")
    with pytest.raises(ConfigError, match=r"'\.\.'"):
        SftpDatastore("127.0.0.1:2222", "images/../..", api_key="u", password="pw")
    for fqdn in ("https://host", "user:secret@host:22", "host:22/images", "host:notaport", ""):
        with pytest.raises(ConfigError) as err:
            SftpDatastore(fqdn, "", api_key="u", password="pw")
        assert "secret" not in str(err.value)
    with pytest.raises(ConfigError, match="apiKey"):
        SftpDatastore("127.0.0.1:2222", "", api_key="", password="pw")


def put_dated(server: RunningSftp, path: str, data: bytes | Path, mtime: float) -> None:
    """Write the file in place (same inode, as an upload over SFTP does), with a known modification time."""
    target = server.put(path, data)
    os.utime(target, (mtime, mtime))


def test_an_sftp_file_replaced_between_attempts_ends_verified(tmp_path, sftp_server: RunningSftp) -> None:  # noqa: F811
    """Killed mid-download of the file's old version; the server then gets the version the config names (same
    size, rewritten in place): its modification time is not the one kept beside the partial, so the partial
    goes and the new file comes whole."""
    old = make_raw_image(tmp_path / "old.raw", 8, seed=93)
    new = make_raw_image(tmp_path / "new.raw", 8, seed=94)
    put_dated(sftp_server, "images/swap.raw", old, time.time() - 3600)
    with TcpFaultProxy(f"127.0.0.1:{sftp_server.port}", seed=8) as proxy:
        # the SSH stream stalls a little after 5 MiB, so the partial holds 4 MiB (whole MiB chunks) when killed
        stall = proxy.add("stall", 5 * MiB + 256 * 1024, seconds=60)
        b = ConfigBuilder().fast_retries(3)
        ds = sftp_datastore(b, sftp_server, fqdn=f"127.0.0.1:{proxy.port}")
        b.download_volume(b.content_tree(ds, "swap.raw", sha256_file(new), "raw", name="swap"), 8 * MiB,
                          name="swap")
        data, proc, _ = replaced_between_attempts(
            tmp_path, b, sha256_file(new), 4 * MiB, ready=lambda: stall.injected,
            replace=lambda: put_dated(sftp_server, "images/swap.raw", new, time.time()),
            rerun=lambda data, cfg: (run_once(data, b, cfg), []))
    assert_started_over(proc.stderr, 4 * MiB)  # SFTP has no GET to look at: the log says it
    assert_volume_is(data, "swap", new)


def test_an_sftp_file_rewritten_during_a_read_fails_it(sftp_server: RunningSftp) -> None:  # noqa: F811
    """SFTP has no conditional read: the open file's modification time and size are compared with stat's before
    and after the read."""
    put_dated(sftp_server, "images/moving.bin", b"first version " * 1000, time.time() - 60)
    ds = SftpDatastore(sftp_server.fqdn, "images", api_key=sftp_server.user, password=sftp_server.password)
    try:
        assert_a_replaced_object_fails_the_read(
            ds, "moving.bin", lambda: put_dated(sftp_server, "images/moving.bin", b"second version " * 1000,
                                                time.time()))
        # rewritten in place while the read is under way: the check after the read catches it
        put_dated(sftp_server, "images/moving.bin", os.urandom(3 * MiB), time.time() - 60)
        seen = ds.stat("moving.bin")
        chunks = ds.read("moving.bin", 0, seen.size, seen.validator)
        next(chunks)
        put_dated(sftp_server, "images/moving.bin", os.urandom(3 * MiB), time.time())
        with pytest.raises(ObjectChanged):
            list(chunks)
    finally:
        ds.close()
