"""Validation of an EdgeDevConfig into the desired state, rule by rule.

Each rule is checked the way a controller would break it: build a config with
one bad field beside good objects and check that exactly the bad object (and
whatever depends on it) is refused with a message that says why, while
everything else is applied.
"""

from __future__ import annotations

import hashlib

import pytest

from edgevol.api import messages as m
from edgevol.model.desired import (
    DatastoreKind,
    DesiredState,
    ImageFormat,
    ObjectError,
    ObjectKind,
    Settings,
    VolumeOrigin,
    VolumeRef,
)
from edgevol.model.parse import parse_config
from tests.configs import ConfigBuilder, new_id

SHA = hashlib.sha256(b"content").hexdigest()
SHA2 = hashlib.sha256(b"other content").hexdigest()
MiB = 1 << 20
PiB = 1 << 50
DS_URL = "http://127.0.0.1:8080"


def base() -> tuple[ConfigBuilder, str]:
    b = ConfigBuilder()
    return b, b.datastore(DS_URL)


def only_error(state: DesiredState) -> ObjectError:
    assert len(state.errors) == 1, state.errors
    return state.errors[0]


# -- the good path --------------------------------------------------------------

def test_a_valid_config_parses_completely():
    b, ds = base()
    ct_q = b.content_tree(ds, "images/disk.qcow2", SHA, "qcow2", max_size=64 * MiB, name="disk")
    ct_r = b.content_tree(ds, "data.raw", SHA2.upper(), "raw", name="data")
    reg = b.registry("127.0.0.1:5000")
    ct_c = b.content_tree(reg, "library/alpine:3", "", "container", name="alpine")
    b.cfg.contentInfo[0].generation_count = 3
    blank = b.blank_volume(10 * MiB, name="scratch", readonly=False, generation=1)
    disk = b.download_volume(ct_q, 128 * MiB, name="root", readonly=True)
    app = b.app([blank, disk], name="web")

    state = parse_config(b.cfg)

    assert state.errors == []
    assert state.device_id == b.cfg.id.uuid
    d = state.datastores[ds]
    assert (d.kind, d.fqdn, d.dpath) == (DatastoreKind.HTTP, DS_URL, "")
    q = state.content_trees[ct_q]
    assert (q.datastore_id, q.url, q.format, q.sha256, q.max_size_bytes, q.display_name, q.generation) == (
        ds, "images/disk.qcow2", ImageFormat.QCOW2, SHA, 64 * MiB, "disk", 3)
    assert state.content_trees[ct_r].sha256 == SHA2 and state.content_trees[ct_r].max_size_bytes is None
    c = state.content_trees[ct_c]
    assert c.format is ImageFormat.CONTAINER and c.sha256 is None
    v = state.volumes[blank]
    assert (v.origin, v.content_tree_id, v.max_size_bytes, v.generation, v.readonly, v.display_name) == (
        VolumeOrigin.BLANK, None, 10 * MiB, 1, False, "scratch")
    v = state.volumes[disk]
    assert (v.origin, v.content_tree_id, v.max_size_bytes, v.readonly) == (VolumeOrigin.DOWNLOAD, ct_q, 128 * MiB, True)
    a = state.apps[app]
    assert a.display_name == "web" and a.volume_refs == (VolumeRef(blank, 0), VolumeRef(disk, 0))
    assert state.settings == Settings()


def test_an_empty_config_is_valid():
    state = parse_config(m.EdgeDevConfig())
    assert state.errors == [] and state.device_id == ""
    assert not (state.datastores or state.content_trees or state.volumes or state.apps)


def test_uppercase_uuids_are_canonical_and_still_match_their_references():
    b = ConfigBuilder(device_id=new_id().upper())
    ds = b.datastore(DS_URL, ds_id=new_id().upper())
    ct = b.content_tree(ds.upper(), "a.raw", SHA, "raw", ct_id=new_id().upper())
    vol = b.download_volume(ct, MiB, vol_id=new_id().upper())
    b.app([vol])
    b.cfg.apps[0].volumeRefList[0].uuid = vol.upper()

    state = parse_config(b.cfg)

    assert state.errors == []
    assert state.device_id == b.cfg.id.uuid.lower()
    assert list(state.datastores) == [ds.lower()]
    assert state.content_trees[ct.lower()].datastore_id == ds.lower()
    assert state.volumes[vol.lower()].content_tree_id == ct.lower()
    assert list(state.apps.values())[0].volume_refs == (VolumeRef(vol.lower(), 0),)


def test_a_device_id_that_is_not_a_uuid_is_kept_as_given():
    b = ConfigBuilder(device_id="edge-node-7")
    assert parse_config(b.cfg).device_id == "edge-node-7"


# -- UUIDs ----------------------------------------------------------------------

BAD_UUIDS = [
    "",
    "not-a-uuid",
    "0123456789abcdef0123456789abcdef",  # no dashes
    "{01234567-89ab-cdef-0123-456789abcdef}",
    "urn:uuid:01234567-89ab-cdef-0123-456789abcdef",
    "0123456789ab-cdef-0123-4567-89abcdef",  # 36 chars, dashes in the wrong places
    "0123456789abcdef0123456789abcdef----",
    "0123456z-89ab-cdef-0123-456789abcdef",
    " 1234567-89ab-cdef-0123-456789abcdef",
]


@pytest.mark.parametrize("bad", BAD_UUIDS)
def test_bad_object_uuids_are_refused(bad):
    b, ds = base()
    good_ct = b.content_tree(ds, "a.raw", SHA, "raw")
    good_vol = b.download_volume(good_ct, MiB)
    b.datastore(DS_URL)
    b.cfg.datastores[-1].id = bad
    b.content_tree(ds, "b.raw", SHA2, "raw")
    b.cfg.contentInfo[-1].uuid = bad
    b.blank_volume(MiB)
    b.cfg.volumes[-1].uuid = bad
    b.app([good_vol])
    b.cfg.apps[-1].uuidandversion.uuid = bad

    state = parse_config(b.cfg)

    got = {(e.kind, e.object_id): e.message for e in state.errors}
    labels = {ObjectKind.DATASTORE: "datastore id", ObjectKind.CONTENT_TREE: "content tree uuid",
              ObjectKind.VOLUME: "volume uuid", ObjectKind.APP: "app instance uuid"}
    assert set(got) == {(kind, bad) for kind in labels}
    for kind, label in labels.items():
        assert got[(kind, bad)] == f"{label} {bad!r} is not a UUID (want 8-4-4-4-12 hex)"
    assert list(state.content_trees) == [good_ct] and list(state.volumes) == [good_vol]
    assert len(state.datastores) == 1 and state.apps == {}


@pytest.mark.parametrize("bad", ["not-a-uuid", "0123456789abcdef0123456789abcdef"])
def test_bad_uuid_references_are_refused(bad):
    b, ds = base()
    ct = b.content_tree(ds, "a.raw", SHA, "raw")
    vol = b.download_volume(ct, MiB)
    bad_ct = b.content_tree(bad, "b.raw", SHA2, "raw")
    bad_vol = b.download_volume(bad, MiB)
    app = b.app([vol, bad])

    state = parse_config(b.cfg)

    got = {(e.kind, e.object_id): e.message for e in state.errors}
    assert got == {
        (ObjectKind.CONTENT_TREE, bad_ct): f"dsId {bad!r} is not a UUID (want 8-4-4-4-12 hex)",
        (ObjectKind.VOLUME, bad_vol): f"downloadContentTreeID {bad!r} is not a UUID (want 8-4-4-4-12 hex)",
        (ObjectKind.APP, app): f"volumeRef uuid {bad!r} is not a UUID (want 8-4-4-4-12 hex)",
    }
    assert list(state.content_trees) == [ct] and list(state.volumes) == [vol] and state.apps == {}


# -- sha256 -----------------------------------------------------------------------

@pytest.mark.parametrize("given", [SHA, SHA.upper(), f"sha256:{SHA}", f"SHA256:{SHA.upper()}", f"  {SHA}\n"])
def test_sha256_is_normalised(given):
    b, ds = base()
    ct = b.content_tree(ds, "a.raw", given, "raw")
    state = parse_config(b.cfg)
    assert state.errors == [] and state.content_trees[ct].sha256 == SHA


@pytest.mark.parametrize("bad", [SHA[:63], SHA + "0", "g" * 64, f"sha512:{SHA}", f"{SHA[:32]} {SHA[32:63]}",
                                 "sha256:", "0x" + SHA[:62]])
def test_malformed_sha256_is_refused(bad):
    b, ds = base()
    ct = b.content_tree(ds, "a.raw", bad, "raw", name="img")
    state = parse_config(b.cfg)
    err = only_error(state)
    assert (err.kind, err.object_id, err.name) == (ObjectKind.CONTENT_TREE, ct, "img")
    assert err.message == f"sha256 {bad!r} is not 64 hexadecimal characters"
    assert state.content_trees == {}


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_disk_content_needs_a_sha256(fmt):
    b, ds = base()
    b.content_tree(ds, "a.img", "", fmt)
    err = only_error(parse_config(b.cfg))
    assert err.message == f"sha256 is required for {fmt.upper()} content (nothing to verify the download against)"


# -- sizes ------------------------------------------------------------------------

def test_size_limits():
    b, ds = base()
    ct_ok = b.content_tree(ds, "ok.raw", SHA, "raw", max_size=PiB)
    ct_huge = b.content_tree(ds, "huge.raw", SHA, "raw", max_size=PiB + 1)
    ct_neg_gen = b.content_tree(ds, "g.raw", SHA, "raw")
    b.cfg.contentInfo[-1].generation_count = -1
    v_ok = b.blank_volume(PiB)
    v_huge = b.blank_volume(PiB + 1)
    v_neg = b.blank_volume(-1)
    v_zero = b.blank_volume(0, name="zero")
    v_neg_gen = b.blank_volume(MiB, generation=-2)
    v_download_zero = b.download_volume(ct_ok, 0)  # the image's own size

    state = parse_config(b.cfg)

    got = {e.object_id: e.message for e in state.errors}
    assert got == {
        ct_huge: f"maxSizeBytes {PiB + 1} is larger than 1 PiB",
        ct_neg_gen: "generation_count -1 is negative",
        v_huge: f"maxsizebytes {PiB + 1} is larger than 1 PiB",
        v_neg: "maxsizebytes -1 is negative",
        # EVE pkg/pillar/cmd/volumemgr/updatestatus.go:573-576: its words first
        v_zero: "Cannot create volume with 0 size: a BLANK volume needs maxsizebytes > 0",
        v_neg_gen: "generationCount -2 is negative",
    }
    assert [e.generation for e in state.errors if e.object_id == v_neg_gen] == [0]
    assert set(state.content_trees) == {ct_ok} and state.content_trees[ct_ok].max_size_bytes == PiB
    assert set(state.volumes) == {v_ok, v_download_zero}


def test_negative_volume_ref_generation_is_refused():
    b, _ = base()
    vol = b.blank_volume(MiB)
    app = b.app([vol])
    b.cfg.apps[0].volumeRefList[0].generationCount = -1
    err = only_error(parse_config(b.cfg))
    assert (err.kind, err.object_id, err.message) == (ObjectKind.APP, app, "volumeRef generationCount -1 is negative")


# -- formats and origins -------------------------------------------------------------

@pytest.mark.parametrize("number,name", [(0, "FmtUnknown"), (10, "PVC"), (42, "42")])
def test_unsupported_formats_are_refused(number, name):
    b, ds = base()
    good = b.content_tree(ds, "good.raw", SHA, "raw")
    bad = b.content_tree(ds, "x.img", SHA, "raw")
    b.cfg.contentInfo[-1].iformat = number  # type: ignore[assignment]
    state = parse_config(b.cfg)
    err = only_error(state)
    assert err.object_id == bad
    assert err.message == (f"format {name} is not supported "
                           "(supported: RAW, QCOW, QCOW2, VHD, VMDK, OVA, VHDX, CONTAINER, ISO, BLOB_TREE)")
    assert list(state.content_trees) == [good]


def test_unknown_volume_origin_is_refused():
    b, _ = base()
    vol = b.blank_volume(MiB)
    b.cfg.volumes[0].origin.type = m.VolumeContentOriginType.VCOT_UNKNOWN
    err = only_error(parse_config(b.cfg))
    assert (err.object_id, err.message) == (vol, "origin type 0 is neither BLANK nor DOWNLOAD")


# -- datastores ------------------------------------------------------------------------

@pytest.mark.parametrize("fqdn", ["127.0.0.1:8080", "http://host", "https://host.example/base/path",
                                  "HTTP://Host:1", "http://[::1]:8080"])
def test_good_http_fqdns(fqdn):
    b = ConfigBuilder()
    ds = b.datastore(fqdn)
    state = parse_config(b.cfg)
    assert state.errors == [] and state.datastores[ds].fqdn == fqdn


@pytest.mark.parametrize("fqdn,message", [
    ("", "fqdn is empty"),
    ("   ", "fqdn is empty"),
    ("ftp://host", "fqdn 'ftp://host' is not an http(s) host"),
    ("http://", "fqdn 'http://' is not an http(s) host"),
    ("http:///path", "fqdn 'http:///path' is not an http(s) host"),
    ("http://user:secret@host", "fqdn 'http://user:secret@host' must not carry credentials, a query or a fragment"),
    ("http://host/?x=1", "fqdn 'http://host/?x=1' must not carry credentials, a query or a fragment"),
    ("http://host/#frag", "fqdn 'http://host/#frag' must not carry credentials, a query or a fragment"),
])
def test_bad_http_fqdns(fqdn, message):
    b = ConfigBuilder()
    ds = b.datastore(fqdn)
    state = parse_config(b.cfg)
    err = only_error(state)
    assert (err.kind, err.object_id, err.message) == (ObjectKind.DATASTORE, ds, message)
    assert state.datastores == {}


def test_datastore_types():
    b = ConfigBuilder()
    unknown = b.datastore(DS_URL)
    b.cfg.datastores[-1].dType = m.DsType.DsUnknown
    s3 = b.datastore("s3.example.com", dpath="bucket")
    b.cfg.datastores[-1].dType = m.DsType.DsS3
    aws = b.datastore("", dpath="bucket/prefix")  # no endpoint: AWS for the region (syncop.go)
    b.cfg.datastores[-1].dType = m.DsType.DsS3
    nobucket = b.datastore("s3.example.com")
    b.cfg.datastores[-1].dType = m.DsType.DsS3
    reg = b.datastore("registry.example.com")
    b.cfg.datastores[-1].dType = m.DsType.DsContainerRegistry
    https = b.datastore("https://secure.example")
    state = parse_config(b.cfg)
    errors = {e.object_id: e.message for e in state.errors}
    assert errors == {unknown: "datastore type 0 is unknown", nobucket: "an S3 datastore names its bucket in dpath"}
    assert state.datastores[s3].kind is DatastoreKind.S3 and state.datastores[aws].fqdn == ""
    assert state.datastores[reg].kind is DatastoreKind.CONTAINER_REGISTRY
    assert state.datastores[https].kind is DatastoreKind.HTTPS


def test_cloud_datastore_fields_as_eve_maps_them():
    """Azure: fqdn the blob service, dpath the container; GCS: fqdn empty for Google, dpath the bucket;
    SFTP: fqdn host[:port] without a scheme (EVE pkg/pillar/cmd/downloader/syncop.go)."""
    b = ConfigBuilder()

    def add(dtype: int, fqdn: str, dpath: str = "") -> str:
        ds = b.datastore(fqdn, dpath=dpath)
        b.cfg.datastores[-1].dType = dtype
        return ds

    azure = add(m.DsType.DsAzureBlob, "https://acct.blob.core.windows.net", "images")
    no_container = add(m.DsType.DsAzureBlob, "https://acct.blob.core.windows.net")
    gcs = add(m.DsType.DsGoogleStorage, "", "bucket/prefix")
    no_bucket = add(m.DsType.DsGoogleStorage, "")
    sftp = add(m.DsType.DsSFTP, "files.example.net:2222", "srv/images")
    sftp_default_port = add(m.DsType.DsSFTP, "files.example.net")
    with_scheme = add(m.DsType.DsSFTP, "sftp://files.example.net:2222")  # as EVE takes it too
    other_scheme = add(m.DsType.DsSFTP, "https://files.example.net")
    with_path = add(m.DsType.DsSFTP, "files.example.net/srv")
    bad_port = add(m.DsType.DsSFTP, "files.example.net:ssh")
    state = parse_config(b.cfg)
    errors = {e.object_id: e.message for e in state.errors}
    assert errors == {
        no_container: "an Azure Blob datastore names its container in dpath",
        no_bucket: "a Google Storage datastore names its bucket in dpath",
        other_scheme: "fqdn 'https://files.example.net' is not an SFTP address: host[:port] or "
                      "sftp://host[:port], without a path",
        with_path: "fqdn 'files.example.net/srv' is not an SFTP address: host[:port] or sftp://host[:port], "
                   "without a path",
        bad_port: "fqdn 'files.example.net:ssh' is not an SFTP address: host[:port] or sftp://host[:port], "
                  "without a path",
    }
    kinds = {ds: state.datastores[ds].kind for ds in (azure, gcs, sftp, sftp_default_port, with_scheme)}
    assert set(kinds.values()) == {DatastoreKind.AZURE_BLOB, DatastoreKind.GOOGLE_STORAGE, DatastoreKind.SFTP}


def test_datastore_credentials_are_kept_out_of_repr():
    b = ConfigBuilder()
    ds = b.datastore(DS_URL, apiKey="user", password="hunter2")
    d = parse_config(b.cfg).datastores[ds]
    assert (d.api_key, d.password) == ("user", "hunter2")
    assert "hunter2" not in repr(d) and "user" not in repr(d)


# -- URL suffixes and dpath --------------------------------------------------------------

TRAVERSALS = [
    "..", "../x", "a/../../x", "a/..", "%2e%2e/x", "%2E%2e/x", ".%2e/x", "%252e%252e/x", "%25252e%25252e/x",
    "..%2fx", "a%2f..%2fx", "a?/../x", "a#/../x", "x/%2e%2e",
]
DOT_SEGMENTS = ["./x", "a/./b", "%2e/x", "a/."]
ODD_CHARACTERS = {
    "a\\..\\x": "contains a backslash",
    "a\\b": "contains a backslash",
    "a%5c..%5cx": "decodes to a backslash or NUL",
    "x%00y": "decodes to a backslash or NUL",
    "x%2500y": "decodes to a backslash or NUL",
    "a\x00b": "contains control characters",
    "a\nb": "contains control characters",
    "a\x7fb": "contains control characters",
}
ABSOLUTE = ["http://127.0.0.1:8080/a.raw", "https://evil.example/a.raw", "//evil.example/a.raw",
            "file:///etc/passwd", "a/http://x"]
SAFE_URLS = ["disk.qcow2", "dir/sub/disk.qcow2", "/leading/slash.raw", "a..b/c", "...", "v1.2/img.raw",
             "name with spaces.raw", "a?b", "100%25.raw", "a/b/"]


@pytest.mark.parametrize("url", TRAVERSALS)
def test_url_traversal_is_refused(url):
    b, ds = base()
    ct = b.content_tree(ds, url, SHA, "raw", name="t")
    err = only_error(parse_config(b.cfg))
    assert (err.kind, err.object_id) == (ObjectKind.CONTENT_TREE, ct)
    assert err.message == f"URL {url!r} tries to leave the datastore path with '..'"


@pytest.mark.parametrize("url", DOT_SEGMENTS)
def test_url_dot_segments_are_refused(url):
    b, ds = base()
    b.content_tree(ds, url, SHA, "raw")
    assert only_error(parse_config(b.cfg)).message == f"URL {url!r} has a '.' segment, which datastores refuse"


@pytest.mark.parametrize("url,why", sorted(ODD_CHARACTERS.items()))
def test_url_odd_characters_are_refused(url, why):
    b, ds = base()
    b.content_tree(ds, url, SHA, "raw")
    assert only_error(parse_config(b.cfg)).message == f"URL {url!r} {why}"


@pytest.mark.parametrize("url", ABSOLUTE)
def test_absolute_urls_are_refused(url):
    b, ds = base()
    b.content_tree(ds, url, SHA, "raw")
    msg = only_error(parse_config(b.cfg)).message
    assert msg == f"URL {url!r} is an absolute URL, not a path inside the datastore"


def test_empty_url_is_refused():
    b, ds = base()
    b.content_tree(ds, "", SHA, "raw")
    assert only_error(parse_config(b.cfg)).message == "URL is empty"


@pytest.mark.parametrize("url", SAFE_URLS)
def test_safe_urls_are_kept_verbatim(url):
    b, ds = base()
    ct = b.content_tree(ds, url, SHA, "raw")
    state = parse_config(b.cfg)
    assert state.errors == [] and state.content_trees[ct].url == url


@pytest.mark.parametrize("dpath", ["..", "../up", "pub/../..", "%2e%2e", "pub?/../..", "./pub", "a\\b",
                                   "http://evil/x", "p\x01"])
def test_bad_dpath_is_refused_and_its_content_trees_with_it(dpath):
    b = ConfigBuilder()
    ds = b.datastore(DS_URL, dpath=dpath)
    ct = b.content_tree(ds, "a.raw", SHA, "raw")
    vol = b.download_volume(ct, MiB)
    state = parse_config(b.cfg)
    errs = {e.kind: e for e in state.errors}
    assert set(errs) == {ObjectKind.DATASTORE, ObjectKind.CONTENT_TREE, ObjectKind.VOLUME}
    assert errs[ObjectKind.DATASTORE].object_id == ds
    assert errs[ObjectKind.DATASTORE].message.startswith(f"dpath {dpath!r} ")
    assert errs[ObjectKind.CONTENT_TREE].message.startswith(f"datastore {ds} is invalid: dpath {dpath!r} ")
    assert errs[ObjectKind.VOLUME].message.startswith(f"content tree {ct} is invalid: datastore {ds} is invalid")
    assert state.datastores == {} and state.content_trees == {} and state.volumes == {}


@pytest.mark.parametrize("dpath", ["pub", "pub/images/v1", "/pub/", "a..b"])
def test_good_dpath_is_kept(dpath):
    b = ConfigBuilder()
    ds = b.datastore(DS_URL, dpath=dpath)
    state = parse_config(b.cfg)
    assert state.errors == [] and state.datastores[ds].dpath == dpath


# -- dangling references --------------------------------------------------------------------

def test_dangling_references_are_refused_with_the_cause():
    b, ds = base()
    missing_ds, missing_ct, missing_vol = new_id(), new_id(), new_id()
    ct_ok = b.content_tree(ds, "a.raw", SHA, "raw")
    ct_no_ds = b.content_tree(missing_ds, "b.raw", SHA, "raw")
    ct_empty_ds = b.content_tree("", "c.raw", SHA, "raw")
    v_ok = b.download_volume(ct_ok, MiB)
    v_missing = b.download_volume(missing_ct, MiB, name="dangling", generation=4)
    v_on_bad = b.download_volume(ct_no_ds, MiB)
    app_missing = b.app([v_ok, missing_vol], name="a1")
    app_on_bad = b.app([v_on_bad], name="a2")
    app_ok = b.app([v_ok], name="a3")

    state = parse_config(b.cfg)

    got = {e.object_id: e.message for e in state.errors}
    assert got == {
        ct_no_ds: f"datastore {missing_ds} is not in the config",
        ct_empty_ds: "names no datastore (dsId is empty)",
        v_missing: f"content tree {missing_ct} is not in the config",
        v_on_bad: f"content tree {ct_no_ds} is invalid: datastore {missing_ds} is not in the config",
        app_missing: f"volumeRef {missing_vol} names a volume that is not in the config or is invalid",
        app_on_bad: f"volumeRef {v_on_bad} names a volume that is not in the config or is invalid",
    }
    err = next(e for e in state.errors if e.object_id == v_missing)
    assert (err.kind, err.name, err.generation) == (ObjectKind.VOLUME, "dangling", 4)
    assert list(state.content_trees) == [ct_ok]
    assert list(state.volumes) == [v_ok]
    assert list(state.apps) == [app_ok]


def test_ds_ids_list_is_used_when_ds_id_is_empty():
    b, ds = base()
    other = b.datastore("http://mirror.example")
    ct = b.content_tree("", "a.raw", SHA, "raw")
    b.cfg.contentInfo[0].ds_ids_list.extend([ds, other])
    state = parse_config(b.cfg)
    assert state.errors == [] and state.content_trees[ct].datastore_id == ds
    assert state.content_trees[ct].fallback_datastore_ids == (other,)
    # an unknown datastore in the list refuses the tree, as EVE's downloader cannot use the list then
    # (pkg/pillar/cmd/downloader/downloader.go:457-465, prepareDatastoresList)
    missing = new_id()
    b.cfg.contentInfo[0].ds_ids_list.append(missing)
    assert {e.object_id: e.message for e in parse_config(b.cfg).errors}[ct] == \
        f"datastore {missing} is not in the config"


def test_a_content_tree_on_an_invalid_datastore_says_why():
    b = ConfigBuilder()
    ds = b.datastore("ftp://nope")
    ct = b.content_tree(ds, "a.raw", SHA, "raw")
    state = parse_config(b.cfg)
    got = {e.object_id: e.message for e in state.errors}
    assert got[ct] == f"datastore {ds} is invalid: fqdn 'ftp://nope' is not an http(s) host"


# -- duplicates ---------------------------------------------------------------------------

def test_a_duplicated_id_refuses_every_copy_and_what_depends_on_it():
    b, ds = base()
    ct = b.content_tree(ds, "first.raw", SHA, "raw", name="first")
    b.content_tree(ds, "second.raw", SHA2, "raw", name="second", ct_id=ct)
    on_ct = b.download_volume(ct, MiB)
    vol = b.blank_volume(MiB, name="first")
    b.blank_volume(2 * MiB, name="second", vol_id=vol)
    b.blank_volume(3 * MiB, name="third", vol_id=vol)
    on_vol = b.app([vol])
    app = b.app([], name="first")
    b.app([], name="second", app_id=app)
    ok_vol = b.blank_volume(MiB, name="ok")

    state = parse_config(b.cfg)

    assert sorted((e.kind.value, e.object_id, e.message) for e in state.errors) == sorted([
        ("content_tree", ct, "duplicate content tree uuid"),
        ("volume", on_ct, f"content tree {ct} is invalid: duplicate content tree uuid"),
        ("volume", vol, "duplicate volume uuid"),
        ("volume", vol, "duplicate volume uuid"),
        ("app", on_vol, f"volumeRef {vol} names a volume that is not in the config or is invalid"),
        ("app", app, "duplicate app instance uuid")])
    assert state.content_trees == {} and state.apps == {}
    assert list(state.volumes) == [ok_vol]


def test_a_duplicate_that_is_also_invalid_still_refuses_the_valid_copy():
    b, _ = base()
    vol = b.blank_volume(-1, name="broken")
    b.blank_volume(MiB, name="fine", vol_id=vol)
    err = only_error(parse_config(b.cfg))
    assert (err.object_id, err.message, err.name) == (vol, "maxsizebytes -1 is negative", "broken")
    assert parse_config(b.cfg).volumes == {}


def test_a_duplicated_datastore_id_refuses_both_and_their_content_trees():
    b, ds = base()
    b.datastore("http://other.example", ds_id=ds)
    ct = b.content_tree(ds, "a.raw", SHA, "raw")
    state = parse_config(b.cfg)
    assert {(e.kind, e.object_id, e.message) for e in state.errors} == {
        (ObjectKind.DATASTORE, ds, "duplicate datastore id"),
        (ObjectKind.CONTENT_TREE, ct, f"datastore {ds} is invalid: duplicate datastore id")}
    assert state.datastores == {} and state.content_trees == {}


def test_ids_that_differ_only_in_case_are_duplicates():
    b, ds = base()
    vol = b.blank_volume(MiB)
    b.blank_volume(MiB, vol_id=vol.upper())
    state = parse_config(b.cfg)
    assert (only_error(state).object_id, only_error(state).message) == (vol, "duplicate volume uuid")
    assert state.volumes == {}


# -- config items ---------------------------------------------------------------------------

def test_config_items_set_device_settings():
    b = (ConfigBuilder().item("edgevol.volume.blank.format", "raw").item("edgevol.download.max.attempts", "7")
         .item("edgevol.download.retry.base.seconds", "0.5").item("edgevol.download.retry.cap.seconds", "30")
         .item("edgevol.download.slow.retry.seconds", "60").item("edgevol.download.parallel", "8")
         .item("timer.config.interval", "60").item("edgevol.some.future.knob", "whatever"))
    state = parse_config(b.cfg)
    assert state.errors == []
    assert state.settings == Settings(blank_format=ImageFormat.RAW, download_max_attempts=7, retry_base_seconds=0.5,
                                      retry_cap_seconds=30.0, slow_retry_seconds=60.0, parallel_downloads=8)


@pytest.mark.parametrize("key,value,message", [
    ("edgevol.volume.blank.format", "vmdk", "want qcow2 or raw"),
    ("edgevol.volume.blank.format", "QCOW2", "want qcow2 or raw"),
    ("edgevol.download.max.attempts", "many", "not a whole number"),
    ("edgevol.download.max.attempts", "2.5", "not a whole number"),
    ("edgevol.download.max.attempts", "0", "want 1..100"),
    ("edgevol.download.max.attempts", "101", "want 1..100"),
    ("edgevol.download.retry.base.seconds", "-1", "want 0.0..3600"),
    ("edgevol.download.retry.base.seconds", "nan", "want 0.0..3600"),
    ("edgevol.download.retry.cap.seconds", "inf", "want 0.0..86400"),
    ("edgevol.download.slow.retry.seconds", "", "not a number"),
    ("edgevol.download.parallel", "65", "want 1..64"),
])
def test_bad_config_items_are_refused_and_defaults_kept(key, value, message):
    b, ds = base()
    b.item(key, value)
    if key != "edgevol.download.max.attempts":
        b.item("edgevol.download.max.attempts", "9")
    vol = b.blank_volume(MiB)
    state = parse_config(b.cfg)
    err = only_error(state)
    assert (err.kind, err.object_id, err.message) == (ObjectKind.CONFIG_ITEM, key, f"{key}={value!r}: {message}")
    defaults = Settings()
    attr = {"edgevol.volume.blank.format": "blank_format", "edgevol.download.max.attempts": "download_max_attempts",
            "edgevol.download.retry.base.seconds": "retry_base_seconds",
            "edgevol.download.retry.cap.seconds": "retry_cap_seconds",
            "edgevol.download.slow.retry.seconds": "slow_retry_seconds",
            "edgevol.download.parallel": "parallel_downloads"}[key]
    assert getattr(state.settings, attr) == getattr(defaults, attr)
    if key != "edgevol.download.max.attempts":
        assert state.settings.download_max_attempts == 9  # a good item beside a bad one still applies
    assert list(state.volumes) == [vol] and list(state.datastores) == [ds]


# -- the rest of the config survives -----------------------------------------------------------

def test_valid_objects_beside_invalid_ones_survive():
    b, ds = base()
    bad_ds = b.datastore("")
    good_ct = b.content_tree(ds, "good.qcow2", SHA, "qcow2", name="good")
    ct_bad_sha = b.content_tree(ds, "bad.qcow2", SHA[:63], "qcow2")
    ct_bad_url = b.content_tree(ds, "../bad.qcow2", SHA, "qcow2")
    ct_on_bad_ds = b.content_tree(bad_ds, "x.raw", SHA, "raw")
    reg = b.registry("127.0.0.1:5000")
    container = b.content_tree(reg, "library/nginx:1", "", "container")
    blank = b.blank_volume(MiB, name="blank")
    disk = b.download_volume(good_ct, 4 * MiB, name="disk")
    on_bad_sha = b.download_volume(ct_bad_sha, MiB)
    on_bad_url = b.download_volume(ct_bad_url, MiB)
    bad_uuid_vol = b.blank_volume(MiB, vol_id="nope")
    app_ok = b.app([blank, disk])
    app_bad = b.app([disk, on_bad_url])
    b.item("edgevol.download.parallel", "0").item("edgevol.download.max.attempts", "3")

    state = parse_config(b.cfg)

    assert set(state.datastores) == {ds, reg}
    assert set(state.content_trees) == {good_ct, container}
    assert set(state.volumes) == {blank, disk}
    assert set(state.apps) == {app_ok}
    assert state.settings.download_max_attempts == 3 and state.settings.parallel_downloads == 2
    assert sorted((e.kind.value, e.object_id) for e in state.errors) == sorted([
        ("datastore", bad_ds), ("content_tree", ct_bad_sha), ("content_tree", ct_bad_url),
        ("content_tree", ct_on_bad_ds), ("volume", on_bad_sha), ("volume", on_bad_url), ("volume", bad_uuid_vol),
        ("app", app_bad), ("config_item", "edgevol.download.parallel")])
    assert state.errors_for(ObjectKind.VOLUME, on_bad_url)[0].message.startswith(
        f"content tree {ct_bad_url} is invalid: URL '../bad.qcow2' tries to leave")


def test_an_eve_timer_item_of_thousands_of_digits_is_a_config_error():
    """Python's int() refuses a string of more than 4,300 digits; such a value is refused as out of range,
    not a crash of the whole config's parse."""
    b, _ = base()
    b.item("timer.download.retry", "9" * 5000)
    state = parse_config(b.cfg)
    [err] = state.errors
    assert err.object_id == "timer.download.retry" and "not a whole number of seconds" in err.message
    assert state.settings.slow_retry_seconds == Settings().slow_retry_seconds
