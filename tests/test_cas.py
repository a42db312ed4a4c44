"""Content store: OCI layout on disk, verified and resumable ingest."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest

from edgevol import fsutil
from edgevol.device.cas import ingest as ingest_module
from edgevol.device.cas.ingest import WRITE_BEHIND
from edgevol.device.cas import (
    CasError,
    ContentStore,
    Descriptor,
    DigestMismatch,
    IngestBusy,
    SizeLimitExceeded,
    SizeMismatch,
)

MiB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "cas")


def put(store: ContentStore, data: bytes) -> Path:
    with store.ingest(sha(data), expected_size=len(data)) as ing:
        ing.write(data)
        return ing.commit()


# -- layout ------------------------------------------------------------------


def test_layout_created_and_valid(tmp_path: Path) -> None:
    root = tmp_path / "cas"
    ContentStore(root)
    assert json.loads((root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((root / "index.json").read_text())
    assert index == {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [],
    }
    assert (root / "blobs" / "sha256").is_dir()
    assert (root / "ingest").is_dir()


def test_reopening_keeps_roots_and_blobs(tmp_path: Path) -> None:
    root = tmp_path / "cas"
    s1 = ContentStore(root)
    data = b"manifest"
    put(s1, data)
    s1.set_roots({"app": Descriptor("application/vnd.oci.image.manifest.v1+json", sha(data), len(data))})
    before = (root / "index.json").read_bytes()
    s2 = ContentStore(root)
    assert (root / "index.json").read_bytes() == before
    assert s2.list_blobs() == [sha(data)]
    assert s2.roots()["app"].digest == sha(data)


def test_corrupt_oci_layout_is_rewritten(tmp_path: Path) -> None:
    root = tmp_path / "cas"
    ContentStore(root)
    (root / "oci-layout").write_text("{torn")
    ContentStore(root)
    assert json.loads((root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}


# -- digest validation ---------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sha256:" + "a" * 64,
        "A" * 64,
        "a" * 63,
        "a" * 65,
        "../" + "a" * 61,
        "a" * 64 + "\n",
        "g" * 64,
        None,
        b"a" * 64,
    ],
)
def test_invalid_digests_rejected(store: ContentStore, bad: object) -> None:
    for call in (store.blob_path, store.has, store.size, store.delete, store.verify,
                 store.ingest, store.discard_ingest, store.ingest_offset):
        with pytest.raises(ValueError):
            call(bad)  # type: ignore[arg-type]
    assert files_under(store.ingest_dir) == []


# -- ingest and commit -----------------------------------------------------------


def test_ingest_commit_gives_path_and_bytes(store: ContentStore) -> None:
    data = os.urandom(3 * MiB + 17)
    d = sha(data)
    with store.ingest(d, expected_size=len(data)) as ing:
        for i in range(0, len(data), MiB):
            ing.write(data[i:i + MiB])
        assert ing.offset == len(data)
        path = ing.commit()
    assert path == store.root / "blobs" / "sha256" / d
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert store.has(d) and store.size(d) == len(data) and store.verify(d)
    assert store.list_blobs() == [d]
    assert files_under(store.ingest_dir) == []  # no partial, no lock file left


def test_wrong_digest_leaves_nothing(store: ContentStore) -> None:
    claimed = sha(b"what the server promised")
    ing = store.ingest(claimed)
    ing.write(b"what the server sent")
    with pytest.raises(DigestMismatch) as ei:
        ing.commit()
    assert claimed in str(ei.value) and sha(b"what the server sent") in str(ei.value)
    assert files_under(store.blobs_dir) == []
    assert files_under(store.ingest_dir) == []
    assert store.ingest_offset(claimed) == 0
    # The digest is free again.
    store.ingest(claimed).close()


def test_short_download_is_size_mismatch(store: ContentStore) -> None:
    data = b"0123456789"
    ing = store.ingest(sha(data), expected_size=len(data))
    ing.write(data[:6])
    with pytest.raises(SizeMismatch) as ei:
        ing.commit()
    assert "expected 10" in str(ei.value) and "got 6" in str(ei.value)
    assert files_under(store.blobs_dir) == []
    assert files_under(store.ingest_dir) == []


def test_commit_closes_ingest(store: ContentStore) -> None:
    data = b"x"
    ing = store.ingest(sha(data))
    ing.write(data)
    ing.commit()
    with pytest.raises(CasError):
        ing.write(b"more")
    assert store.blob_path(sha(data)).read_bytes() == data


@pytest.mark.parametrize("kwargs", [{"max_size": 10}, {"expected_size": 10}])
def test_write_crossing_limit_raises_at_that_write(store: ContentStore, kwargs: dict[str, int]) -> None:
    d = sha(b"irrelevant")
    with store.ingest(d, **kwargs) as ing:
        ing.write(b"12345")
        ing.write(b"67890")  # exactly at the limit is fine
        with pytest.raises(SizeLimitExceeded) as ei:
            ing.write(b"!")
        assert ei.value.limit == 10 and ei.value.attempted == 11
        assert ing.offset == 10
    assert store.ingest_offset(d) == 10  # the refused write put nothing on disk


def test_announced_size_over_max_refused(store: ContentStore) -> None:
    d = sha(b"big")
    with pytest.raises(SizeLimitExceeded):
        store.ingest(d, expected_size=100, max_size=99)
    store.ingest(d).close()  # no lock left behind


def test_reset_restarts_from_zero(store: ContentStore) -> None:
    data = b"the real blob"
    with store.ingest(sha(data)) as ing:
        ing.write(b"whole body sent despite our Range header")
        ing.reset()
        assert ing.offset == 0
        ing.write(data)
        assert ing.commit().read_bytes() == data


# -- resume --------------------------------------------------------------------


def test_resume_after_close(store: ContentStore) -> None:
    data = os.urandom(2 * MiB + 5)
    d, half = sha(data), len(data) // 2
    with store.ingest(d, expected_size=len(data)) as ing:
        ing.write(data[:half])
    assert store.ingest_offset(d) == half
    assert files_under(store.blobs_dir) == []  # partial never visible under blobs/
    with store.ingest(d, expected_size=len(data)) as ing:
        assert ing.offset == half
        ing.write(data[half:])
        path = ing.commit()
    assert path.read_bytes() == data


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range(2) is Linux's")
def test_start_writeback_reaches_the_kernel(tmp_path: Path) -> None:
    """A wrong binding (argument types, flag) would make the kernel refuse it: EINVAL, False."""
    path = tmp_path / "f"
    path.write_bytes(os.urandom(MiB))
    fd = os.open(path, os.O_RDWR)
    try:
        assert fsutil.start_writeback(fd, 0, MiB) is True
        assert fsutil.start_writeback(fd, -1, MiB) is False  # the kernel does check what it is given
    finally:
        os.close(fd)
    r, w = os.pipe()
    try:
        assert fsutil.start_writeback(w, 0, 10) is False  # not a file: refused, not raised
    finally:
        os.close(r)
        os.close(w)


def test_ingest_hands_every_write_behind_range_to_writeback_once(store: ContentStore,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Writeback is started for consecutive ranges as bytes arrive, from the resume point on."""
    calls: list[tuple[int, int, bool]] = []

    def spy(fd: int, offset: int, length: int) -> bool:
        ok = fsutil.start_writeback(fd, offset, length)
        calls.append((offset, length, ok))
        return ok

    monkeypatch.setattr(ingest_module, "start_writeback", spy)
    data = os.urandom(3 * WRITE_BEHIND + 12345)
    d, cut = sha(data), WRITE_BEHIND + WRITE_BEHIND // 2
    with store.ingest(d, expected_size=len(data)) as ing:
        for i in range(0, cut, 1 << 20):
            ing.write(data[i:min(i + (1 << 20), cut)])
    with store.ingest(d, expected_size=len(data)) as ing:  # resumed at ``cut``
        for i in range(cut, len(data), 3 << 20):
            ing.write(data[i:i + (3 << 20)])
        path = ing.commit()
    assert path.read_bytes() == data
    # first run: 1 MiB writes, one range at 8 MiB; the 4 MiB after it wait for the commit's fsync.
    # resumed run: 3 MiB writes from 12 MiB, one range once 9 MiB are in; the ~4 MiB tail waits too.
    assert [(c[0], c[1]) for c in calls] == [(0, WRITE_BEHIND), (cut, 9 << 20)]
    assert all(ok for _, _, ok in calls) == sys.platform.startswith("linux")


def test_torn_partial_detected(store: ContentStore) -> None:
    data = os.urandom(100_000)
    d = sha(data)
    with store.ingest(d) as ing:
        ing.write(data)
    with open(store.ingest_dir / f"{d}.partial", "ab") as f:
        f.write(b"garbage after a crash")
    with store.ingest(d) as ing:
        assert ing.offset == len(data) + len(b"garbage after a crash")
        with pytest.raises(DigestMismatch):
            ing.commit()
    assert not store.has(d)
    assert store.ingest_offset(d) == 0


def test_corrupted_partial_detected_with_expected_size(store: ContentStore) -> None:
    data = os.urandom(4096)
    d = sha(data)
    with store.ingest(d, expected_size=len(data)) as ing:
        ing.write(data[:2048])
    partial = store.ingest_dir / f"{d}.partial"
    partial.write_bytes(b"\0" * 2048)  # same length, wrong bytes
    with store.ingest(d, expected_size=len(data)) as ing:
        ing.write(data[2048:])
        with pytest.raises(DigestMismatch):
            ing.commit()
    assert files_under(store.blobs_dir) == []


def test_overlong_partial_restarts_when_size_known(store: ContentStore) -> None:
    data = b"abcdef"
    d = sha(data)
    (store.ingest_dir / f"{d}.partial").write_bytes(b"abcdef+garbage")
    with store.ingest(d, expected_size=len(data)) as ing:
        assert ing.offset == 0  # cannot be a prefix of the blob; start over
        ing.write(data)
        assert ing.commit().read_bytes() == data


# -- exclusivity -----------------------------------------------------------------


def test_same_digest_twice_in_process_is_busy(store: ContentStore) -> None:
    d = sha(b"x")
    first = store.ingest(d)
    with pytest.raises(IngestBusy) as ei:
        store.ingest(d)
    assert d in str(ei.value)
    with pytest.raises(IngestBusy):
        ContentStore(store.root).ingest(d)  # another store object, same files
    with pytest.raises(IngestBusy):
        store.discard_ingest(d)
    first.write(b"x")
    first.close()
    with store.ingest(d) as again:
        assert again.offset == 1


def test_same_digest_across_processes_is_busy(store: ContentStore) -> None:
    data = b"cross-process"
    d = sha(data)
    holder = textwrap.dedent(
        f"""
        import sys
        from edgevol.device.cas import ContentStore
        ing = ContentStore({str(store.root)!r}).ingest({d!r})
        ing.write(b"cross")
        print("ready", flush=True)
        sys.stdin.read()
        ing.close()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with pytest.raises(IngestBusy):
            store.ingest(d)
        assert store.clean_ingests() == []  # an open ingest is not cleaned away
    finally:
        proc.communicate(input="", timeout=60)
    assert proc.returncode == 0
    with store.ingest(d, expected_size=len(data)) as ing:
        assert ing.offset == len(b"cross")
        ing.write(data[ing.offset:])
        assert ing.commit().read_bytes() == data


def test_different_digests_ingest_concurrently(store: ContentStore) -> None:
    a, b = b"aaa", b"bbb"
    with store.ingest(sha(a)) as ia, store.ingest(sha(b)) as ib:
        ia.write(a)
        ib.write(b)
        ia.commit()
        ib.commit()
    assert store.list_blobs() == sorted([sha(a), sha(b)])


def test_commit_of_present_digest_is_idempotent(store: ContentStore) -> None:
    data = b"shared layer"
    d = sha(data)
    first = put(store, data)
    inode = first.stat().st_ino
    with store.ingest(d, expected_size=len(data)) as ing:
        ing.write(data)
        second = ing.commit()
    assert second == first and second.read_bytes() == data
    assert second.stat().st_ino == inode  # the existing blob was kept, not replaced
    assert files_under(store.ingest_dir) == []
    assert store.list_blobs() == [d]


# -- delete, verify -------------------------------------------------------------


def test_delete_and_verify(store: ContentStore) -> None:
    data = b"payload"
    d = sha(data)
    path = put(store, data)
    os.chmod(path, 0o644)
    path.write_bytes(b"bitrot!")
    assert store.has(d) and not store.verify(d)
    store.delete(d)
    assert not store.has(d) and store.size(d) is None and store.list_blobs() == []
    store.delete(d)  # missing is fine
    assert not store.verify(d)


# -- roots -----------------------------------------------------------------------


def test_set_roots_writes_valid_deterministic_index(store: ContentStore) -> None:
    m1, m2 = b"manifest one", b"manifest two"
    mt = "application/vnd.oci.image.manifest.v1+json"
    roots = {
        "zeta": Descriptor(mt, sha(m2), len(m2), {"x.custom": "1"}),
        "alpha": Descriptor(mt, sha(m1), len(m1)),
    }
    store.set_roots(roots)
    raw = (store.root / "index.json").read_bytes()
    index = json.loads(raw)
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert index["manifests"] == [
        {
            "mediaType": mt,
            "digest": "sha256:" + sha(m1),
            "size": len(m1),
            "annotations": {"org.opencontainers.image.ref.name": "alpha"},
        },
        {
            "mediaType": mt,
            "digest": "sha256:" + sha(m2),
            "size": len(m2),
            "annotations": {"org.opencontainers.image.ref.name": "zeta", "x.custom": "1"},
        },
    ]
    store.set_roots(dict(reversed(list(roots.items()))))
    assert (store.root / "index.json").read_bytes() == raw
    assert store.roots() == roots
    store.set_roots({})
    assert json.loads((store.root / "index.json").read_text())["manifests"] == []
    assert [p for p in store.root.iterdir() if p.name.startswith(".tmp-")] == []


def test_descriptor_rejects_bad_digest() -> None:
    with pytest.raises(ValueError):
        Descriptor("application/octet-stream", "sha256:" + "a" * 64, 1)


# -- clean-up ---------------------------------------------------------------------


def test_clean_ingests_removes_unkept_partials_and_temps(store: ContentStore) -> None:
    keep_d, drop_d = sha(b"keep"), sha(b"drop")
    for d in (keep_d, drop_d):
        with store.ingest(d) as ing:
            ing.write(b"partial")
    (store.ingest_dir / (sha(b"stale") + ".lock")).write_bytes(b"")
    (store.root / ".tmp-index.json.abc").write_bytes(b"torn")
    (store.blobs_dir / ".tmp-x").write_bytes(b"torn")
    removed = store.clean_ingests(keep={keep_d})
    assert removed == [drop_d]
    assert files_under(store.ingest_dir) == [f"{keep_d}.partial"]
    assert store.ingest_offset(keep_d) == len(b"partial")
    assert not (store.root / ".tmp-index.json.abc").exists()
    assert files_under(store.blobs_dir) == []


def test_discard_ingest(store: ContentStore) -> None:
    d = sha(b"z")
    with store.ingest(d) as ing:
        ing.write(b"zz")
        ing.set_validator('src "etag"')
    store.discard_ingest(d)
    assert store.ingest_offset(d) == 0
    assert files_under(store.ingest_dir) == []  # the validator went with its partial
    store.discard_ingest(d)  # nothing there is fine


# -- validators --------------------------------------------------------------------


def test_a_validator_lives_beside_its_partial_across_reopens(store: ContentStore) -> None:
    data = b"0123456789"
    d = sha(data)
    with store.ingest(d) as ing:
        assert ing.validator is None
        ing.set_validator('http:abc "v1"')
        ing.write(data[:4])
    assert files_under(store.ingest_dir) == [f"{d}.partial", f"{d}.validator"]
    assert (store.ingest_dir / f"{d}.validator").read_text() == 'http:abc "v1"'
    with store.ingest(d) as ing:  # a restarted agent sees what the bytes came from
        assert ing.offset == 4 and ing.validator == 'http:abc "v1"'
        ing.set_validator('http:abc "v1"')  # unchanged: nothing is rewritten
        ing.reset()  # the bytes go, and so does what described them
        assert ing.validator is None and files_under(store.ingest_dir) == [f"{d}.lock", f"{d}.partial"]
        ing.set_validator('http:abc "v2"')
        ing.write(data)
        ing.commit()
    assert files_under(store.ingest_dir) == []  # committed: no partial, no validator, no lock


def test_validators_go_with_discarded_and_failed_partials(store: ContentStore) -> None:
    d = sha(b"right")
    with store.ingest(d) as ing:
        ing.set_validator("v")
        ing.write(b"wrong")
        with pytest.raises(DigestMismatch):
            ing.commit()
    assert files_under(store.ingest_dir) == []
    with store.ingest(d) as ing:
        ing.set_validator("v")
        ing.set_validator(None)
        assert ing.validator is None and not (store.ingest_dir / f"{d}.validator").exists()
        ing.set_validator("w")
        ing.discard()
    assert files_under(store.ingest_dir) == []


def test_a_validator_without_its_partial_is_never_believed(store: ContentStore) -> None:
    d = sha(b"x")
    (store.ingest_dir / f"{d}.validator").write_text("left by a crash")  # its partial was already removed
    with store.ingest(d) as ing:
        assert ing.offset == 0 and ing.validator is None
    assert files_under(store.ingest_dir) == [f"{d}.partial"]


def test_clean_ingests_keeps_validators_only_beside_kept_partials(store: ContentStore) -> None:
    keep_d, drop_d, orphan_d = sha(b"keep"), sha(b"drop"), sha(b"orphan")
    for d in (keep_d, drop_d):
        with store.ingest(d) as ing:
            ing.set_validator(f"src {d[:8]}")
            ing.write(b"partial")
    (store.ingest_dir / f"{orphan_d}.validator").write_text("src x")  # kept digest, but no partial
    removed = store.clean_ingests(keep={keep_d, orphan_d})
    assert removed == [drop_d]
    assert files_under(store.ingest_dir) == [f"{keep_d}.partial", f"{keep_d}.validator"]
    with store.ingest(keep_d) as ing:
        assert ing.offset == len(b"partial") and ing.validator == f"src {keep_d[:8]}"


# -- memory ------------------------------------------------------------------------


def _chunk(i: int) -> bytes:
    return bytes([i % 251]) * MiB


def test_50_mib_ingest_with_resume_keeps_memory_flat(store: ContentStore) -> None:
    n = 50
    h = hashlib.sha256()
    for i in range(n):
        h.update(_chunk(i))
    d = h.hexdigest()
    tracemalloc.start()
    try:
        with store.ingest(d, expected_size=n * MiB) as ing:
            for i in range(n // 2):
                ing.write(_chunk(i))
        with store.ingest(d, expected_size=n * MiB) as ing:  # re-hashes 25 MiB
            assert ing.offset == (n // 2) * MiB
            for i in range(n // 2, n):
                ing.write(_chunk(i))
            path = ing.commit()
        assert store.verify(d)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, f"peak python allocation {peak} bytes"
    assert path.stat().st_size == n * MiB
