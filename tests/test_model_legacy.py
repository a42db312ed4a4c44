"""Legacy Drives become implicit volumes: identification, the transition phases, refusals.

The controller side of the contract is the UUID formula, so it is computed
here independently (uuid5 over a literal namespace) and pinned by a known
vector: a change to the formula would strand every implicit volume's data.
"""

from __future__ import annotations

import hashlib
import uuid as uuidlib
from pathlib import Path

import pytest

from edgevol.api import messages as m
from edgevol.device.reconcile.builders import volume_spec
from edgevol.model.desired import ContentTree, DesiredState, ImageFormat, ObjectKind, VolumeOrigin, VolumeRef
from edgevol.model.parse import parse_config
from tests.conftest import by_name, device_status, guest_write, make_raw_image, open_guest, run_cli
from tests.configs import ConfigBuilder, drive, new_id, sha256_file

SHA = hashlib.sha256(b"content").hexdigest()
SHA2 = hashlib.sha256(b"other content").hexdigest()
MiB = 1 << 20
DS_URL = "http://127.0.0.1:8080"
NAMESPACE = uuidlib.UUID("ff3672c4-c04f-4ed5-8993-4b5fc4f309b7")


def expected_uuid(app_id: str, image_key: str) -> str:
    return str(uuidlib.uuid5(NAMESPACE, f"{app_id}/{image_key}"))


def base() -> tuple[ConfigBuilder, str]:
    b = ConfigBuilder()
    return b, b.datastore(DS_URL)


def image_id(d: m.Drive) -> str:
    return d.image.uuidandversion.uuid


# -- phase 2: drives only ------------------------------------------------------------------

def test_a_drives_only_app_gets_one_implicit_volume_per_drive():
    b, ds = base()
    root = drive(ds, "images/root.qcow2", SHA.upper(), "qcow2", size_bytes=64 * MiB, max_size=256 * MiB,
                 readonly=True, preserve=True)
    scratch = drive(drvtype="hdd_empty", max_size=32 * MiB)
    named_blank = drive(drvtype="hdd_empty", max_size=8 * MiB, image_id=new_id(), url="swap")
    cd = drive(ds, "tools.raw", SHA2, "raw", drvtype="cdrom")
    app = b.app_with_drives([root, scratch, named_blank, cd], name="web")

    state = parse_config(b.cfg)

    assert state.errors == []
    v_root, v_scratch, v_named, v_cd = (expected_uuid(app, image_id(root)), expected_uuid(app, "blank-1"),
                                        expected_uuid(app, image_id(named_blank)), expected_uuid(app, image_id(cd)))
    assert state.apps[app].volume_refs == tuple(VolumeRef(u, 0) for u in (v_root, v_scratch, v_named, v_cd))
    assert set(state.volumes) == {v_root, v_scratch, v_named, v_cd}

    v = state.volumes[v_root]
    assert (v.generation, v.origin, v.content_tree_id, v.max_size_bytes, v.readonly, v.preserve, v.display_name) == (
        0, VolumeOrigin.DOWNLOAD, image_id(root), 256 * MiB, True, True, "web/images/root.qcow2")
    assert (v.implicit, v.app_uuid, v.image_uuid) == (True, app, image_id(root))
    v = state.volumes[v_scratch]
    assert (v.origin, v.content_tree_id, v.max_size_bytes, v.readonly, v.preserve, v.display_name) == (
        VolumeOrigin.BLANK, None, 32 * MiB, False, False, "web/blank")
    assert (v.implicit, v.app_uuid, v.image_uuid) == (True, app, "")
    v = state.volumes[v_named]
    assert (v.origin, v.content_tree_id, v.display_name, v.image_uuid) == (
        VolumeOrigin.BLANK, None, "web/swap", image_id(named_blank))
    assert (state.volumes[v_cd].origin, state.volumes[v_cd].max_size_bytes) == (VolumeOrigin.DOWNLOAD, 0)

    # the images became content trees (blank drives add none)
    assert state.content_trees == {
        image_id(root): ContentTree(uuid=image_id(root), datastore_id=ds, url="images/root.qcow2",
                                    format=ImageFormat.QCOW2, sha256=SHA, max_size_bytes=64 * MiB,
                                    display_name="images/root.qcow2", generation=0),
        image_id(cd): ContentTree(uuid=image_id(cd), datastore_id=ds, url="tools.raw", format=ImageFormat.RAW,
                                  sha256=SHA2, max_size_bytes=None, display_name="tools.raw", generation=0),
    }


def test_explicit_volumes_are_not_implicit():
    b, _ = base()
    vol = b.blank_volume(MiB)
    state = parse_config(b.cfg)
    v = state.volumes[vol]
    assert (v.implicit, v.app_uuid, v.image_uuid, v.preserve) == (False, "", "", False)


def test_the_volume_uuid_is_deterministic_and_pinned():
    app_id = "11111111-2222-3333-4444-555555555555"
    img = "66666666-7777-8888-9999-aaaaaaaaaaaa"

    def build(upper: bool) -> DesiredState:
        b, ds = base()
        d = drive(ds, "a.raw", SHA, "raw", image_id=img.upper() if upper else img)
        b.app_with_drives([d, drive(drvtype="hdd_empty", max_size=MiB)], app_id=app_id.upper() if upper else app_id)
        return parse_config(b.cfg)

    first, again, upper = build(False), build(False), build(True)
    for state in (first, again, upper):
        assert state.errors == []
        # literal vectors: a controller computing uuid5(ns, f"{app}/{image}") must get exactly these
        assert state.apps[app_id].volume_refs == (VolumeRef("470abbe1-7286-5b8a-b116-e3d0d8deb6f6", 0),
                                                  VolumeRef(expected_uuid(app_id, "blank-1"), 0))
    assert expected_uuid(app_id, img) == "470abbe1-7286-5b8a-b116-e3d0d8deb6f6"
    assert first.volumes == again.volumes == upper.volumes


# -- phase 1: both sent -----------------------------------------------------------------------

def test_when_both_are_sent_volume_ref_list_wins():
    b, ds = base()
    ct = b.content_tree(ds, "root.qcow2", SHA, "qcow2", name="root")
    vol = b.download_volume(ct, 64 * MiB, name="root")
    # the drives restate the image with another sha256, a broken one, and the same image twice:
    # all of it would be refused if the drives were looked at
    clashing = drive(ds, "root.qcow2", SHA2, "qcow2", image_id=ct)
    broken = drive(ds, "../escape.raw", "not-a-sha", "raw")
    app = b.app_with_drives([clashing, broken, clashing], volume_ids=[vol], name="web")
    other = b.app_with_drives([drive(ds, "x.raw", SHA, "raw", image_id=image_id(broken))], volume_ids=[vol])

    state = parse_config(b.cfg)

    assert state.errors == []
    assert list(state.volumes) == [vol] and not state.volumes[vol].implicit
    assert list(state.content_trees) == [ct] and state.content_trees[ct].sha256 == SHA
    assert state.apps[app].volume_refs == (VolumeRef(vol, 0),) == state.apps[other].volume_refs


def test_an_app_with_neither_drives_nor_refs_stays_empty():
    b, _ = base()
    app = b.app([])
    state = parse_config(b.cfg)
    assert state.errors == [] and state.apps[app].volume_refs == () and state.volumes == {}


# -- phase 2 -> 3: the same volume, named explicitly ------------------------------------------------

def test_switching_drives_to_volume_refs_with_the_implicit_uuid_keeps_the_volume():
    app, img = new_id(), new_id()
    root_uuid, blank_uuid = expected_uuid(app, img), expected_uuid(app, "blank-1")

    old, ds = base()
    old.app_with_drives([drive(ds, "root.qcow2", SHA, "qcow2", image_id=img, max_size=64 * MiB, readonly=True),
                         drive(drvtype="hdd_empty", max_size=16 * MiB)], app_id=app, name="web")
    new = ConfigBuilder()
    new.datastore(DS_URL, ds_id=ds)
    new.content_tree(ds, "root.qcow2", SHA, "qcow2", ct_id=img, name="root.qcow2")
    new.download_volume(img, 64 * MiB, vol_id=root_uuid, readonly=True, name="web root")
    new.blank_volume(16 * MiB, vol_id=blank_uuid, name="web scratch")
    new.app([root_uuid, blank_uuid], app_id=app, name="web")
    both = ConfigBuilder()  # phase 1 on the way: the new objects plus the old drives
    both.cfg.CopyFrom(new.cfg)
    both.cfg.apps[0].drives.extend(old.cfg.apps[0].drives)

    before, during, after = parse_config(old.cfg), parse_config(both.cfg), parse_config(new.cfg)

    assert before.errors == during.errors == after.errors == []
    assert before.apps[app].volume_refs == during.apps[app].volume_refs == after.apps[app].volume_refs == (
        VolumeRef(root_uuid, 0), VolumeRef(blank_uuid, 0))
    assert before.content_trees == during.content_trees == after.content_trees
    assert set(before.volumes) == set(after.volumes) == {root_uuid, blank_uuid}
    for uuid in (root_uuid, blank_uuid):
        implicit, explicit = before.volumes[uuid], after.volumes[uuid]
        assert implicit.implicit and not explicit.implicit
        assert (implicit.uuid, implicit.generation, implicit.origin, implicit.content_tree_id,
                implicit.max_size_bytes, implicit.readonly) == (
            explicit.uuid, explicit.generation, explicit.origin, explicit.content_tree_id,
            explicit.max_size_bytes, explicit.readonly)
        # what the device compares before touching an existing volume
        assert volume_spec(implicit) == volume_spec(explicit)
        assert during.volumes[uuid] == explicit
    assert (before.volumes[root_uuid].display_name, after.volumes[root_uuid].display_name) == (
        "web/root.qcow2", "web root")


def test_the_device_keeps_the_volume_data_across_the_switch(tmp_path, datastore_dir, http_server):
    raw = make_raw_image(datastore_dir / "root.raw", 2)
    app, img = new_id(), new_id()
    vol = expected_uuid(app, img)
    old = ConfigBuilder()
    ds = old.datastore(http_server.url)
    old.app_with_drives([drive(ds, "root.raw", sha256_file(raw), "raw", image_id=img, max_size=4 * MiB)],
                        app_id=app, name="web")
    data = tmp_path / "dev"
    run_cli("device", "run", "--data-dir", str(data), "--config", str(old.save(tmp_path / "old.pb")), "--once",
            check=True)
    v = by_name(device_status(data)["volumes"], "web/root.raw")
    assert (v["uuid"], v["generation_count"], v["state"]) == (vol, 0, "CREATED_VOLUME")
    path = Path(v["path"])
    with open_guest(path) as f:
        assert f.read(2 * MiB) == raw.read_bytes() and f.read() == bytes(2 * MiB)
    guest_write(path, 3 * MiB, b"app data survives")  # the app writes its data

    new = ConfigBuilder(device_id=old.cfg.id.uuid)
    new.datastore(http_server.url, ds_id=ds)
    new.content_tree(ds, "root.raw", sha256_file(raw), "raw", ct_id=img, name="root.raw")
    new.download_volume(img, 4 * MiB, vol_id=vol, name="web disk")
    new.app([vol], app_id=app, name="web")
    run_cli("device", "run", "--data-dir", str(data), "--config", str(new.save(tmp_path / "new.pb")), "--once",
            check=True)

    (v,) = device_status(data)["volumes"]
    assert (v["uuid"], v["display_name"], v["state"], v["path"]) == (vol, "web disk", "CREATED_VOLUME", str(path))
    with open_guest(path) as f:
        assert f.read(2 * MiB) == raw.read_bytes()
        f.seek(3 * MiB)
        assert f.read(17) == b"app data survives"


# -- refusals ----------------------------------------------------------------------------------------

def _case_no_image(b, ds):
    return [drive(drvtype="hdd")], "drive 0: a HDD drive needs an image (only HDD_EMPTY may omit it)"


def _case_blank_without_size(b, ds):
    return ([drive(ds, "a.raw", SHA, "raw"), drive(drvtype="hdd_empty")],
            "drive 1: an HDD_EMPTY drive needs maxsizebytes > 0")


def _case_bad_image_uuid(b, ds):
    return ([drive(ds, "a.raw", SHA, "raw", image_id="nope")],
            "drive 0: image uuid 'nope' is not a UUID (want 8-4-4-4-12 hex)")


def _case_unknown_drive_type(b, ds):
    d = drive(ds, "a.raw", SHA, "raw")
    d.drvtype = 9  # type: ignore[assignment]
    return [d], "drive 0: drvtype 9 is unknown"


def _case_negative_size(b, ds):
    return [drive(ds, "a.raw", SHA, "raw", max_size=-1)], "drive 0: maxsizebytes -1 is negative"


def _case_negative_image_size(b, ds):
    d = drive(ds, "a.raw", SHA, "raw", size_bytes=-5)
    return [d], f"drive 0: image {image_id(d)}: sizeBytes -5 is negative"


def _case_bad_sha(b, ds):
    d = drive(ds, "a.raw", "xyz", "raw")
    return [d], f"drive 0: image {image_id(d)}: sha256 'xyz' is not 64 hexadecimal characters"


def _case_missing_sha(b, ds):
    d = drive(ds, "a.qcow2", "", "qcow2")
    return [d], (f"drive 0: image {image_id(d)}: sha256 is required for QCOW2 content "
                 "(nothing to verify the download against)")


def _case_traversal(b, ds):
    good, d = drive(ds, "ok.raw", SHA, "raw"), drive(ds, "../etc/x.raw", SHA, "raw")
    return [good, d], f"drive 1: image {image_id(d)}: URL '../etc/x.raw' tries to leave the datastore path with '..'"


def _case_unknown_datastore(b, ds):
    missing = new_id()
    d = drive(missing, "a.raw", SHA, "raw")
    return [d], f"drive 0: image {image_id(d)}: datastore {missing} is not in the config"


def _case_no_datastore(b, ds):
    d = drive("", "a.raw", SHA, "raw")
    return [d], f"drive 0: image {image_id(d)}: names no datastore (dsId is empty)"


def _case_unsupported_format(b, ds):
    d = drive(ds, "a.pvc", SHA, "raw")
    d.image.iformat = m.Format.PVC
    return [d], (f"drive 0: image {image_id(d)}: format PVC is not supported "
                 "(supported: RAW, QCOW, QCOW2, VHD, VMDK, OVA, VHDX, CONTAINER, ISO, BLOB_TREE)")


def _case_same_image_twice(b, ds):
    d = drive(ds, "a.raw", SHA, "raw")
    return [d, drive(ds, "b.raw", SHA2, "raw"), d], (
        f"drive 2: image {image_id(d)} is also drive 0; an implicit volume is identified by app and image, "
        "so an app may use an image once")


def _case_disagrees_with_content_tree(b, ds):
    ct = b.content_tree(ds, "a.raw", SHA, "raw")
    return [drive(ds, "a.raw", SHA2, "raw", image_id=ct)], (
        f"drive 0: image {ct}: disagrees with content tree {ct} of the config "
        f"(sha256 {SHA2} vs {SHA}, URL 'a.raw' vs 'a.raw')")


def _case_invalid_content_tree(b, ds):
    ct = b.content_tree(ds, "../a.raw", SHA, "raw")
    return [drive(ds, "a.raw", SHA, "raw", image_id=ct)], (
        f"drive 0: image {ct}: content tree {ct} is invalid: URL '../a.raw' tries to leave the datastore path "
        "with '..'")


CASES = [_case_no_image, _case_blank_without_size, _case_bad_image_uuid, _case_unknown_drive_type,
         _case_negative_size, _case_negative_image_size, _case_bad_sha, _case_missing_sha, _case_traversal,
         _case_unknown_datastore, _case_no_datastore, _case_unsupported_format, _case_same_image_twice,
         _case_disagrees_with_content_tree, _case_invalid_content_tree]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.removeprefix("_case_") for c in CASES])
def test_an_invalid_drive_refuses_its_app_and_nothing_else(case):
    b, ds = base()
    good_drive = drive(ds, "good.raw", SHA, "raw")
    good = b.app_with_drives([good_drive, drive(drvtype="hdd_empty", max_size=MiB)], name="good")
    drives, message = case(b, ds)
    bad = b.app_with_drives(drives, name="bad")

    state = parse_config(b.cfg)

    bad_errors = [e for e in state.errors if e.kind is ObjectKind.APP]
    assert [(e.object_id, e.name, e.message) for e in bad_errors] == [(bad, "bad", message)]
    assert list(state.apps) == [good]
    assert all(v.app_uuid == good for v in state.volumes.values()) and len(state.volumes) == 2
    # nothing of the refused app's drives was added, not even its valid images
    implicit_trees = set(state.content_trees) - {ct.uuid for ct in b.cfg.contentInfo}
    assert implicit_trees == {image_id(good_drive)}


def test_an_implicit_uuid_already_used_by_a_volume_refuses_the_app():
    b, ds = base()
    app, img = new_id(), new_id()
    b.blank_volume(MiB, vol_id=expected_uuid(app, img))
    b.app_with_drives([drive(ds, "a.raw", SHA, "raw", image_id=img)], app_id=app)
    state = parse_config(b.cfg)
    assert [(e.kind, e.object_id, e.message) for e in state.errors] == [
        (ObjectKind.APP, app, f"drive 0: implicit volume {expected_uuid(app, img)} is also a volume in the config; "
                              "name it in volumeRefList instead of sending the drive")]
    assert state.apps == {} and not state.volumes[expected_uuid(app, img)].implicit


def test_a_duplicated_legacy_app_gets_no_implicit_volumes():
    b, ds = base()
    app = b.app_with_drives([drive(ds, "a.raw", SHA, "raw")])
    b.app_with_drives([drive(ds, "b.raw", SHA2, "raw")], app_id=app)
    state = parse_config(b.cfg)
    assert [(e.object_id, e.message) for e in state.errors] == [(app, "duplicate app instance uuid")]
    assert state.apps == {} and state.volumes == {} and state.content_trees == {}


def test_another_app_cannot_reference_an_implicit_volume():
    b, ds = base()
    legacy = b.app_with_drives([drive(ds, "a.raw", SHA, "raw")])
    implicit = expected_uuid(legacy, image_id(b.cfg.apps[0].drives[0]))
    other = b.app([implicit])
    state = parse_config(b.cfg)
    assert [(e.object_id, e.message) for e in state.errors] == [
        (other, f"volumeRef {implicit} names a volume that is not in the config or is invalid")]
    assert list(state.apps) == [legacy] and list(state.volumes) == [implicit]


# -- shared images ------------------------------------------------------------------------------------

def test_two_apps_with_the_same_image_share_the_content_tree_not_the_volume():
    b, ds = base()
    img = new_id()
    a1 = b.app_with_drives([drive(ds, "base.qcow2", SHA, "qcow2", image_id=img)], name="one")
    a2 = b.app_with_drives([drive(ds, "base.qcow2", SHA, "qcow2", image_id=img, readonly=True)], name="two")

    state = parse_config(b.cfg)

    assert state.errors == []
    v1, v2 = state.apps[a1].volume_refs[0].uuid, state.apps[a2].volume_refs[0].uuid
    assert (v1, v2) == (expected_uuid(a1, img), expected_uuid(a2, img)) and v1 != v2
    assert list(state.content_trees) == [img]
    assert state.volumes[v1].content_tree_id == state.volumes[v2].content_tree_id == img
    assert (state.volumes[v1].readonly, state.volumes[v2].readonly) == (False, True)
    assert (state.volumes[v1].display_name, state.volumes[v2].display_name) == ("one/base.qcow2", "two/base.qcow2")


def test_an_image_shared_with_an_explicit_content_tree_reuses_it():
    b, ds = base()
    ct = b.content_tree(ds, "base.qcow2", SHA, "qcow2", name="the base image", max_size=8 * MiB)
    app = b.app_with_drives([drive(ds, "base.qcow2", f"sha256:{SHA.upper()}", "qcow2", image_id=ct)])
    state = parse_config(b.cfg)
    assert state.errors == []
    assert list(state.content_trees) == [ct] and state.content_trees[ct].display_name == "the base image"
    assert state.volumes[state.apps[app].volume_refs[0].uuid].content_tree_id == ct


def test_an_image_described_two_ways_refuses_every_app_using_it():
    b, ds = base()
    img = new_id()
    a1 = b.app_with_drives([drive(ds, "base.qcow2", SHA, "qcow2", image_id=img)], name="one")
    a2 = b.app_with_drives([drive(ds, "other.raw", SHA2, "raw"), drive(ds, "base.qcow2", SHA2, "qcow2", image_id=img)],
                           name="two")
    ok = b.app_with_drives([drive(ds, "c.raw", SHA, "raw")], name="fine")

    state = parse_config(b.cfg)

    assert sorted((e.object_id, e.name, e.message) for e in state.errors) == sorted([
        (a1, "one", f"drive 0: image {img} is described differently by another drive "
                    "(datastore, name, sha256, format or size)"),
        (a2, "two", f"drive 1: image {img} is described differently by another drive "
                    "(datastore, name, sha256, format or size)")])
    assert list(state.apps) == [ok]
    assert img not in state.content_trees and len(state.content_trees) == 1 and len(state.volumes) == 1
