"""The controller's storage layer, on a real SQLite file and a real PostgreSQL cluster."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from edgevol.api import messages as m
from edgevol.controller.configbuild import build_config, config_hash
from edgevol.controller.db.models import Base
from edgevol.controller.db.session import current_revision, make_engine, migrate
from edgevol.controller.store import Conflict, ControllerStore, Invalid, NotFound
from edgevol.device.report.info import timestamp
from edgevol.model.desired import DatastoreKind, ImageFormat, VolumeOrigin
from edgevol.model.desired import VolumeRef as ModelRef
from edgevol.model.parse import parse_config
from edgevol.trust.pki import der_sha256
from tests.pg_fixture import db_url, pg_cluster, pg_url  # noqa: F401

SHA_A = hashlib.sha256(b"image a").hexdigest()
SHA_B = hashlib.sha256(b"image b").hexdigest()
T0 = datetime(2030, 1, 1, tzinfo=UTC)
HEAD = "0007"
TABLES = {"devices", "datastores", "content_trees", "volumes", "apps", "app_volume_refs", "reported_objects",
          "state_changes", "volume_metrics"}


def make_cert(cn: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(T0 - timedelta(days=1))
            .not_valid_after(T0 + timedelta(days=365)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db_url: str, clock: Clock):  # noqa: F811
    s = ControllerStore(db_url, clock=clock)
    s.migrate()
    yield s
    s.close()


def populated(store: ControllerStore, device: str = "dev1") -> dict[str, str]:
    """A device with an HTTP and a registry datastore, three trees, two volumes and an app."""
    store.create_device(device, "SN-" + device)
    http = store.get_datastore("http") if any(d.name == "http" for d in store.list_datastores()) else \
        store.create_datastore("http", "DsHttp", "127.0.0.1:8080", dpath="images")
    reg = store.get_datastore("reg") if any(d.name == "reg" for d in store.list_datastores()) else \
        store.create_datastore("reg", m.DsType.DsContainerRegistry, "registry.example.com:5000")
    raw = store.create_content_tree(device, "raw-img", http.uuid, "disk.raw", "RAW", sha256=SHA_A.upper())
    qcow = store.create_content_tree(device, "qcow-img", "http", "os/disk.qcow2", m.Format.QCOW2, sha256=SHA_B,
                                     max_size_bytes=1 << 30)
    oci = store.create_content_tree(device, "alpine", "reg", "library/alpine:3.19", "CONTAINER")
    blank = store.create_volume(device, "scratch", max_size_bytes=64 << 20)
    disk = store.create_volume(device, "disk", content_tree="qcow-img", max_size_bytes=2 << 30, readonly=True)
    app = store.create_app(device, "web", volumes=["disk", blank.uuid])
    return {"http": http.uuid, "reg": reg.uuid, "raw": raw.uuid, "qcow": qcow.uuid, "oci": oci.uuid,
            "blank": blank.uuid, "disk": disk.uuid, "app": app.uuid}


# ---------------------------------------------------------------- migrations


def test_migrate_from_empty_twice_matches_the_models(db_url: str) -> None:  # noqa: F811
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) is None
        migrate(engine)
        assert current_revision(engine) == HEAD
        migrate(db_url)  # again, through a URL: nothing to do
        assert current_revision(engine) == HEAD
        assert TABLES <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diffs == []
    finally:
        engine.dispose()


def upgrade_from(db_url: str, revision: str, *rows: tuple[str, dict[str, object]]) -> None:
    """Migrate an empty database to ``revision``, write ``rows`` (SQL, parameters) as that schema had
    them, then migrate to HEAD."""
    engine = make_engine(db_url)
    try:
        migrate(engine, revision)
        with engine.begin() as conn:
            for sql, params in rows:
                conn.execute(text(sql), params)
        migrate(engine)
        assert current_revision(engine) == HEAD
    finally:
        engine.dispose()


def test_migration_0002_moves_pem_hashes_to_der_and_keeps_old_devices_working(db_url: str) -> None:  # noqa: F811
    """Before 0002 a certificate was named by sha256 of its PEM text; EVE names it by its DER."""
    onboard, dev_cert = make_cert("legacy onboard"), make_cert("legacy device")
    upgrade_from(db_url, "0001", (
        "INSERT INTO devices (uuid, name, serial, onboard_cert_pem, onboard_cert_hash, device_cert_pem, "
        "device_cert_hash, created_at, registered_at, config_version) VALUES "
        "('5f0a4e36-8a57-4c1b-9d3e-2b7c8e1f0a11', 'legacy', 'SN-L', :op, :oh, :dp, :dh, :t, :t, 3)",
        {"op": onboard, "oh": hashlib.sha256(onboard).digest(), "dp": dev_cert,
         "dh": hashlib.sha256(dev_cert).digest(), "t": T0.replace(tzinfo=None)}))
    store = ControllerStore(db_url)
    try:
        dev = store.get_device("legacy")
        assert dev.device_cert_hash == der_sha256(dev_cert) and dev.onboard_cert_hash == der_sha256(onboard)
        assert dev.config_version == 3 and dev.registered
        # an upgraded device names itself by DER, a not yet upgraded one still by the PEM hash: both work
        assert store.device_by_cert_hash(der_sha256(dev_cert)).uuid == dev.uuid  # type: ignore[union-attr]
        assert store.device_by_cert_hash(hashlib.sha256(dev_cert).digest()).uuid == dev.uuid  # type: ignore[union-attr]
        assert store.onboarding_cert(der_sha256(onboard)) == onboard
        assert store.onboarding_cert(hashlib.sha256(onboard).digest()) == onboard
        assert store.register(der_sha256(onboard), "SN-L", dev_cert).uuid == dev.uuid  # idempotent retry
    finally:
        store.close()


def test_migration_0005_leaves_old_content_trees_unsigned_and_signs_new_ones(db_url: str) -> None:  # noqa: F811
    """0005 adds siginfo to content trees; those stored before it are unsigned, and stay valid."""
    dev, ds, ct, at = ("5f0a4e36-8a57-4c1b-9d3e-2b7c8e1f0a13", "44444444-4444-4444-8444-444444444444",
                       "55555555-5555-4555-8555-555555555555", T0.replace(tzinfo=None))
    sha = hashlib.sha256(b"image").hexdigest()
    upgrade_from(db_url, "0004", (
        "INSERT INTO devices (uuid, name, serial, created_at, config_version) VALUES (:d, 'old', '', :t, 1)",
        {"d": dev, "t": at}), (
        "INSERT INTO datastores (uuid, name, type, fqdn, dpath, api_key, password, region, ca_pems, created_at) "
        "VALUES (:ds, 'web', 1, 'http://127.0.0.1:1', '', '', '', '', '[]', :t)", {"ds": ds, "t": at}), (
        "INSERT INTO content_trees (uuid, device_uuid, name, datastore_uuid, url, format, sha256, max_size_bytes, "
        "generation_count, created_at) VALUES (:c, :d, 'img', :ds, 'img.raw', 1, :s, 0, 0, :t)",
        {"c": ct, "d": dev, "ds": ds, "s": sha, "t": at}))
    with ControllerStore(db_url) as store:
        old = store.get_content_tree("img", "old")
        assert (old.signer_cert_url, old.intermediate_cert_url, old.signature) == ("", "", None)
        assert not build_config(store, "old").contentInfo[0].HasField("siginfo")
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        done = store.update_content_tree("img", device="old", sign_key_pem=pem, signer_cert_url="certs/signer.pem")
        assert done.content_tree.signature and done.content_tree.signer_cert_url == "certs/signer.pem"
        si = build_config(store, "old").contentInfo[0].siginfo
        assert (si.signercerturl, si.signature) == ("certs/signer.pem", done.content_tree.signature)
        with pytest.raises(Invalid, match="needs the signer's certificate URL"):
            store.create_content_tree("old", "bad", "web", "x.raw", "RAW", sha256=sha, signature=b"sig")


def test_migration_0006_devices_have_acknowledged_no_config_yet(db_url: str) -> None:  # noqa: F811
    dev = "6f0a4e36-8a57-4c1b-9d3e-2b7c8e1f0a16"
    upgrade_from(db_url, "0005", (
        "INSERT INTO devices (uuid, name, serial, created_at, config_version) VALUES (:d, 'old', '', :t, 3)",
        {"d": dev, "t": T0.replace(tzinfo=None)}))
    with ControllerStore(db_url) as store:
        assert store.get_device("old").config_acked_version is None
        store.ack_config(dev, 3)
        [row] = store.fleet()
        assert (row.device.config_version, row.device.config_acked_version, row.counts, row.errors) == (3, 3, {}, 0)


def test_migration_0004_keeps_old_samples_and_stores_every_zmetricvolume_field(db_url: str) -> None:  # noqa: F811
    """0004 adds displayName, readCount and writeCount; samples stored before it read back with '' and 0."""
    vol, at = "33333333-3333-4333-8333-333333333333", T0.replace(tzinfo=None)
    upgrade_from(db_url, "0003", (
        "INSERT INTO devices (uuid, name, serial, created_at, config_version) VALUES "
        "('5f0a4e36-8a57-4c1b-9d3e-2b7c8e1f0a12', 'old', '', :t, 1)", {"t": at}), (
        "INSERT INTO volume_metrics (device_uuid, volume_uuid, at, total_bytes, used_bytes, free_bytes, "
        "read_bytes, write_bytes) VALUES ('5f0a4e36-8a57-4c1b-9d3e-2b7c8e1f0a12', :v, :t, 100, 40, 60, 0, 0)",
        {"v": vol, "t": at}))
    with ControllerStore(db_url) as store:
        [old] = store.volume_metrics("old", vol)
        assert (old.total_bytes, old.used_bytes, old.display_name, old.read_count, old.write_count) == (
            100, 40, "", 0, 0)
        msg = m.ZMetricMsg()
        msg.atTimeStamp.CopyFrom(timestamp((T0 + timedelta(minutes=1)).timestamp()))
        msg.vm.add(uuid=vol, displayName="data", readBytes=1, writeBytes=2, readCount=3, writeCount=4, totalBytes=5,
                   usedBytes=6, freeBytes=7)
        store.record_metrics("old", msg)
        new = store.volume_metrics("old", vol)[-1]
        assert (new.volume_uuid, new.display_name, new.read_bytes, new.write_bytes, new.read_count, new.write_count,
                new.total_bytes, new.used_bytes, new.free_bytes) == (vol, "data", 1, 2, 3, 4, 5, 6, 7)
    # and back: 0003 has no room for the new fields, the samples stay
    from alembic import command

    from edgevol.controller.db.session import alembic_config
    command.downgrade(alembic_config(db_url), "0003")
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) == "0003"
        columns = {c["name"] for c in inspect(engine).get_columns("volume_metrics")}
        assert not {"display_name", "read_count", "write_count"} & columns
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM volume_metrics")).scalar() == 2
    finally:
        engine.dispose()


def test_downgrading_past_device_columns_keeps_what_references_devices(db_url: str) -> None:  # noqa: F811
    """0006 and 0002 drop columns of the devices table; on SQLite a table copy would cascade-delete every
    row that references a device (content trees, volumes, reports)."""
    from alembic import command

    from edgevol.controller.db.session import alembic_config

    upgrade_from(db_url, HEAD)
    with ControllerStore(db_url) as store:
        store.create_device("dev", "SN")
        store.create_datastore("web", "DsHttp", "http://127.0.0.1:1")
        store.create_content_tree("dev", "img", "web", "img.raw", "RAW", sha256="ab" * 32)
        store.create_volume("dev", "data", max_size_bytes=1 << 20)
    command.downgrade(alembic_config(db_url), "0001")
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            counts = [conn.execute(text(f"SELECT count(*) FROM {t}")).scalar()
                      for t in ("devices", "content_trees", "volumes")]
        assert counts == [1, 1, 1]
    finally:
        engine.dispose()


def test_concurrent_migrations_both_succeed(db_url: str) -> None:  # noqa: F811
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate(db_url)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    engine = make_engine(db_url)
    assert current_revision(engine) == HEAD
    engine.dispose()


# ---------------------------------------------------------------- devices and registration


def test_device_crud_and_refusals(store: ControllerStore) -> None:
    onboard = make_cert("onboard")
    a = store.create_device("edge-a", "SN1", onboard)
    assert len(a.uuid) == 36 and a.config_version == 1 and not a.registered
    assert a.onboard_cert_hash == der_sha256(onboard)  # EVE: sha256 of DER (authen.go:491-503)
    assert a.created_at == T0 and a.created_at.tzinfo is not None
    assert store.get_device(a.uuid) == a == store.get_device("edge-a") == store.get_device(a.uuid.upper())
    store.create_device("edge-b", "SN2", onboard)  # one onboarding cert, many serials
    assert [d.name for d in store.list_devices()] == ["edge-a", "edge-b"]

    with pytest.raises(Conflict, match="named 'edge-a' already exists"):
        store.create_device("edge-a", "SN9")
    with pytest.raises(Conflict, match="'edge-a' already uses this onboarding certificate with serial 'SN1'"):
        store.create_device("edge-c", "SN1", onboard)
    with pytest.raises(Invalid, match="not a PEM X.509 certificate"):
        store.create_device("edge-c", "SN3", b"-----BEGIN CERTIFICATE-----\nnope\n")
    with pytest.raises(Invalid, match="must not be empty"):
        store.create_device(" ", "SN3")
    with pytest.raises(NotFound, match="device 'nope' not found"):
        store.get_device("nope")

    renamed = store.update_device("edge-b", name="edge-bee")
    assert renamed.name == "edge-bee" and renamed.config_version == 1
    store.delete_device("edge-a")
    with pytest.raises(NotFound):
        store.get_device(a.uuid)
    with pytest.raises(NotFound):
        store.delete_device(a.uuid)
    assert [d.name for d in store.list_devices()] == ["edge-bee"]


def test_register_semantics(store: ControllerStore, clock: Clock) -> None:
    onboard, dev_cert, other_cert = make_cert("onboard"), make_cert("dev"), make_cert("other")
    onboard_hash = der_sha256(onboard)
    dev = store.create_device("edge", "SN1", onboard)
    store.create_device("edge2", "SN2", onboard)

    with pytest.raises(NotFound, match="serial 'SN-wrong'"):
        store.register(onboard_hash, "SN-wrong", dev_cert)
    with pytest.raises(NotFound):
        store.register(der_sha256(other_cert), "SN1", dev_cert)
    assert store.device_by_cert_hash(der_sha256(dev_cert)) is None
    assert store.onboarding_cert(onboard_hash) == onboard
    assert store.onboarding_cert(onboard_hash[:16]) == onboard
    assert store.onboarding_cert(der_sha256(dev_cert)) is None

    clock.now = T0 + timedelta(minutes=5)
    reg = store.register(onboard_hash, "SN1", dev_cert)
    assert reg.uuid == dev.uuid and reg.registered and reg.registered_at == clock.now
    assert reg.device_cert_hash == der_sha256(dev_cert)
    assert reg.config_version == 1  # registering changes nothing the device should run

    clock.now = T0 + timedelta(minutes=9)
    again = store.register(onboard_hash[:16], "SN1", dev_cert)  # a retry, with a short hash
    assert again.registered_at == T0 + timedelta(minutes=5)
    with pytest.raises(Conflict, match="already registered with a different certificate"):
        store.register(onboard_hash, "SN1", other_cert)
    with pytest.raises(Conflict, match="already registered to device 'edge'"):
        store.register(onboard_hash, "SN2", dev_cert)

    digest = der_sha256(dev_cert)
    assert store.device_by_cert_hash(digest).uuid == dev.uuid  # type: ignore[union-attr]
    assert store.device_by_cert_hash(digest[:16]).uuid == dev.uuid  # type: ignore[union-attr]
    assert store.device_by_cert_hash(digest[:8]) is None
    assert store.device_by_cert_hash(der_sha256(other_cert)) is None
    assert store.device_by_cert_hash(onboard_hash) is None  # the onboarding cert is not a device identity

    # the software serial is tried after the serial (adam pkg/server/commonHandler.go:141-150)
    soft = store.create_device("soft", "SOFT-1", make_cert("soft onboard"))
    soft_onboard = store.get_device("soft").onboard_cert_pem
    assert soft_onboard is not None
    got = store.register(der_sha256(soft_onboard), ["HW-UNKNOWN", "SOFT-1"], make_cert("soft dev"))
    assert got.uuid == soft.uuid and got.registered

    clock.now = T0 + timedelta(hours=1)
    store.touch(dev.uuid)
    assert store.get_device("edge").last_seen_at == clock.now


# ---------------------------------------------------------------- desired objects


def test_crud_of_datastores_trees_volumes_apps(store: ControllerStore) -> None:
    ids = populated(store)
    ds = store.get_datastore("http")
    assert (ds.type_name, ds.fqdn, ds.dpath) == ("DsHttp", "127.0.0.1:8080", "images")
    raw = store.get_content_tree("raw-img", "dev1")
    assert (raw.sha256, raw.format_name, raw.datastore_uuid) == (SHA_A, "RAW", ids["http"])
    assert [t.name for t in store.list_content_trees("dev1")] == ["alpine", "qcow-img", "raw-img"]
    disk = store.get_volume(ids["disk"])
    assert (disk.origin, disk.content_tree_uuid, disk.readonly) == ("download", ids["qcow"], True)
    assert store.get_volume("scratch", "dev1").origin == "blank"
    app = store.get_app("web", "dev1")
    assert [(x.volume_uuid, x.generation_count) for x in app.volume_refs] == [(ids["disk"], 0), (ids["blank"], 0)]

    with pytest.raises(NotFound, match="give the device"):
        store.get_volume("scratch")
    with pytest.raises(Conflict, match="volume named 'disk' already exists on this device"):
        store.create_volume("dev1", "disk", max_size_bytes=1)
    assert store.update_volume("disk", device="dev1", name="root").volume.name == "root"
    assert store.update_content_tree(ids["raw"], url="v2/disk.raw").content_tree.url == "v2/disk.raw"
    assert store.update_app(ids["app"], activate=False).activate is False
    app = store.set_app_volume_refs(ids["app"], [(ids["blank"], 0)])
    assert [x.volume_uuid for x in app.volume_refs] == [ids["blank"]]
    assert store.purge_app(ids["app"]).purge_counter == 1
    with pytest.raises(Invalid, match="listed twice"):
        store.set_app_volume_refs(ids["app"], ["scratch", ids["blank"]])
    store.delete_app(ids["app"])
    store.delete_volume(ids["disk"])
    store.delete_content_tree(ids["qcow"])
    assert store.list_apps("dev1") == []
    assert [v.name for v in store.list_volumes("dev1")] == ["scratch"]


def test_values_the_device_would_refuse_are_refused(store: ControllerStore) -> None:
    populated(store)
    with pytest.raises(Invalid, match="sha256 is required for RAW"):
        store.create_content_tree("dev1", "nosha", "http", "x.raw", "RAW")
    with pytest.raises(Invalid, match=r"'\.\.'"):
        store.create_content_tree("dev1", "escape", "http", "../etc/passwd", "RAW", sha256=SHA_A)
    with pytest.raises(Invalid, match="format 'VMDKX' is unknown"):
        store.create_content_tree("dev1", "odd", "http", "x", "VMDKX", sha256=SHA_A)
    with pytest.raises(Invalid, match="not 64 hexadecimal"):
        store.create_content_tree("dev1", "badsha", "http", "x", "RAW", sha256="abc")
    with pytest.raises(Invalid, match="CONTAINER content needs a container registry"):
        store.create_content_tree("dev1", "oci-on-http", "http", "library/alpine:3", "CONTAINER")
    with pytest.raises(Invalid, match="BLANK volume needs maxsizebytes > 0"):
        store.create_volume("dev1", "empty")
    with pytest.raises(Invalid, match="negative"):
        store.create_volume("dev1", "neg", max_size_bytes=-1)
    with pytest.raises(Invalid, match="datastore type"):
        store.create_datastore("bad", 0, "example.com")
    with pytest.raises(Invalid, match="fqdn is empty"):
        store.create_datastore("bad", "DsHttps", "  ")
    # An update that would break the trees on a datastore is refused and rolled back.
    with pytest.raises(Invalid, match="RAW content cannot come from a container registry"):
        store.update_datastore("http", type="DsContainerRegistry")
    assert store.get_datastore("http").type == m.DsType.DsHttp
    assert [t.name for t in store.list_content_trees("dev1")] == ["alpine", "qcow-img", "raw-img"]


def test_objects_in_use_cannot_be_deleted(store: ControllerStore, db_url: str) -> None:  # noqa: F811
    ids = populated(store)
    with pytest.raises(Conflict, match=r"datastore 'http' is used by content trees dev1/qcow-img, dev1/raw-img"):
        store.delete_datastore("http")
    with pytest.raises(Conflict, match="content tree 'qcow-img' is used by volumes disk; delete them first"):
        store.delete_content_tree("qcow-img", "dev1")
    with pytest.raises(Conflict, match="volume 'disk' is used by apps web"):
        store.delete_volume(ids["disk"])

    # The database itself refuses too, whatever code tries it.
    engine = make_engine(db_url)
    try:
        for sql in (f"DELETE FROM content_trees WHERE uuid = '{ids['qcow']}'",
                    f"DELETE FROM datastores WHERE uuid = '{ids['http']}'",
                    f"DELETE FROM volumes WHERE uuid = '{ids['disk']}'"):
            with pytest.raises(IntegrityError), engine.begin() as conn:
                conn.execute(text(sql))
    finally:
        engine.dispose()

    # A volume cannot use another device's content tree.
    store.create_device("dev2")
    with pytest.raises(NotFound, match="content tree .* not found on device"):
        store.create_volume("dev2", "borrowed", content_tree=ids["qcow"], max_size_bytes=1 << 30)

    store.delete_app("web", "dev1")
    store.delete_volume("disk", "dev1")
    store.delete_content_tree("qcow-img", "dev1")
    store.delete_content_tree("raw-img", "dev1")
    store.delete_datastore("http")
    assert [d.name for d in store.list_datastores()] == ["reg"]


def test_deleting_a_device_removes_everything_it_owns(store: ControllerStore) -> None:
    ids = populated(store)
    populated(store, "dev2")
    info = m.ZInfoMsg(ztype=m.ZInfoTypes.ZiVolume)
    info.vinfo.uuid, info.vinfo.state = ids["disk"], m.ZSwState.CREATED_VOLUME
    store.record_info("dev1", info)
    metrics = m.ZMetricMsg()
    metrics.vm.add(uuid=ids["disk"], totalBytes=10)
    store.record_metrics("dev1", metrics)
    before = {t: store.count(t) for t in TABLES}
    store.delete_device("dev1")
    after = {t: store.count(t) for t in TABLES}
    assert after == {**before, "devices": 1, "content_trees": 3, "volumes": 2, "apps": 1, "app_volume_refs": 2,
                     "reported_objects": 0, "state_changes": 0, "volume_metrics": 0}
    assert after["datastores"] == 2  # shared, still used by dev2


def test_config_version_bumps_on_every_change_to_a_devices_objects(store: ControllerStore) -> None:
    ids = populated(store)
    populated(store, "dev2")
    store.create_device("bystander")

    def v(dev: str = "dev1") -> int:
        return store.get_device(dev).config_version

    start = v()
    assert start == 1 + 3 + 2 + 1  # three trees, two volumes, one app
    store.update_volume(ids["disk"], readonly=True)  # no change: no bump
    assert v() == start
    store.update_volume(ids["disk"], max_size_bytes=3 << 30)  # a new generation, in one config version
    assert v() == start + 1
    purged = store.purge_volume(ids["disk"])
    assert purged.generation_count == 2 and v() == start + 2
    app = store.get_app("web", "dev1")
    refs = app.volume_refs
    assert (refs[0].volume_uuid, refs[0].generation_count) == (ids["disk"], 2)  # the app follows the purge
    assert app.purge_counter == 2  # ... with a purge counter bump, so the device moves it
    store.set_app_volume_refs(ids["app"], [ids["blank"]])
    assert v() == start + 3
    store.set_app_volume_refs(ids["app"], [ids["blank"]])  # same list: no bump
    assert v() == start + 3
    dev2 = v("dev2")
    store.update_datastore("http", name="web-files")  # the name is not in any config
    assert (v(), v("dev2")) == (start + 3, dev2)
    store.update_datastore("web-files", fqdn="127.0.0.1:9090")  # used by both devices' trees
    assert (v(), v("dev2"), v("bystander")) == (start + 4, dev2 + 1, 1)
    store.update_datastore("reg", password="s3cret")
    assert (v(), v("dev2")) == (start + 5, dev2 + 2)
    store.touch("dev1")
    store.purge_app(ids["app"])
    store.delete_app(ids["app"])
    store.delete_volume(ids["disk"])
    assert v() == start + 8
    assert v("dev2") == dev2 + 2 and v("bystander") == 1


def test_a_volume_content_change_makes_a_new_generation_with_its_apps_purged(store: ControllerStore) -> None:
    """Size, read-only flag and origin fix a volume's content: a device applies a change of one only to a
    new generation (EVE: pkg/pillar/cmd/volumemgr/handlevolume.go:48-59, quantifyChanges at :408), so the
    store makes one, and purges the apps following the volume, in the same transaction as the change."""
    ids = populated(store)
    store.create_app("dev1", "other", volumes=["scratch"])

    def version() -> int:
        return store.get_device("dev1").config_version

    start = version()
    renamed = store.update_volume("scratch", device="dev1", name="tmp")  # the name alone: no new generation
    assert (renamed.volume.generation_count, renamed.regenerated_from, renamed.purged_apps) == (0, None, ())
    assert version() == start + 1 and store.get_app("web", "dev1").purge_counter == 0

    with pytest.raises(Conflict, match=r"changing max_size_bytes from 67108864 to 134217728 needs a new "
                                       r"generation.*generation 1 afresh and purge apps other, web to it"):
        store.update_volume("tmp", device="dev1", max_size_bytes=128 << 20, purge=False)
    assert version() == start + 1  # refused: nothing changed
    assert (store.get_volume("tmp", "dev1").max_size_bytes, store.get_volume("tmp", "dev1").generation_count) == (
        64 << 20, 0)

    done = store.update_volume("tmp", device="dev1", max_size_bytes=128 << 20)
    assert (done.volume.max_size_bytes, done.volume.generation_count, done.regenerated_from, done.purged_apps) == (
        128 << 20, 1, 0, ("other", "web"))
    assert version() == start + 2  # one config version: the device never sees the size without the generation
    for name in ("web", "other"):
        app = store.get_app(name, "dev1")
        assert app.purge_counter == 1
        assert (ids["blank"], 1) in {(r.volume_uuid, r.generation_count) for r in app.volume_refs}
    assert (ids["disk"], 0) in {(r.volume_uuid, r.generation_count) for r in store.get_app("web", "dev1").volume_refs}

    # read-only flag and origin are content too; a volume no app uses regenerates with no app purged
    flag = store.update_volume(ids["disk"], readonly=False)
    assert (flag.volume.generation_count, flag.purged_apps) == (1, ("web",))
    store.set_app_volume_refs(ids["app"], [ids["blank"]])
    moved = store.update_volume(ids["disk"], content_tree="raw-img")
    assert (moved.volume.origin, moved.volume.content_tree_uuid, moved.regenerated_from, moved.purged_apps) == (
        "download", ids["raw"], 1, ())
    assert (store.update_volume(ids["disk"], content_tree=None).volume.origin,
            store.get_volume(ids["disk"]).generation_count) == ("blank", 3)
    # what the device is sent passes its own parser: the new generation, and the apps' purge counters
    state = parse_config(build_config(store, "dev1"))
    assert state.errors == []
    assert state.volumes[ids["blank"]].generation == 1 and state.volumes[ids["blank"]].max_size_bytes == 128 << 20
    assert state.apps[ids["app"]].purge_counter == 2  # once for each volume's new generation


def test_a_content_tree_change_needs_no_generation_and_names_the_volumes_keeping_their_content(
        store: ControllerStore) -> None:
    """The device fetches a changed content tree again by itself, as EVE's volumemgr recreates a content
    tree whose URL, format or sha256 changed (pkg/pillar/cmd/volumemgr/handlecontent.go:53-62)."""
    ids = populated(store)
    renamed = store.update_content_tree("qcow-img", device="dev1", name="os")
    assert (renamed.refetched, renamed.volumes_keeping_content) == (False, ())
    changed = store.update_content_tree("os", device="dev1", url="os/disk-v2.qcow2", sha256=SHA_A)
    assert (changed.refetched, changed.volumes_keeping_content) == (True, ("disk",))
    assert (changed.content_tree.generation_count, store.get_volume(ids["disk"]).generation_count) == (0, 0)


def test_concurrent_writers_lose_no_update(store: ControllerStore) -> None:
    store.create_device("busy")
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            for j in range(4):
                store.create_volume("busy", f"v{i}-{j}", max_size_bytes=1 << 20)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.list_volumes("busy")) == 24
    assert store.get_device("busy").config_version == 1 + 24


# ---------------------------------------------------------------- config building


def test_build_config_round_trips_through_the_device_parser(store: ControllerStore) -> None:
    ids = populated(store)
    store.create_datastore("unused", "DsHttps", "files.example.com")
    store.purge_volume(ids["blank"])
    dev = store.get_device("dev1")
    cfg = build_config(store, dev.uuid)
    assert (cfg.id.uuid, cfg.id.version) == (dev.uuid, str(dev.config_version))
    wire = m.EdgeDevConfig.FromString(cfg.SerializeToString())
    state = parse_config(wire)
    assert state.errors == []
    assert state.device_id == dev.uuid
    assert set(state.datastores) == {ids["http"], ids["reg"]}  # only what the trees use
    http = state.datastores[ids["http"]]
    assert (http.kind, http.fqdn, http.dpath) == (DatastoreKind.HTTP, "127.0.0.1:8080", "images")
    assert state.datastores[ids["reg"]].kind is DatastoreKind.CONTAINER_REGISTRY
    raw, qcow, oci = (state.content_trees[ids[k]] for k in ("raw", "qcow", "oci"))
    assert (raw.format, raw.sha256, raw.url, raw.datastore_id, raw.display_name) == (
        ImageFormat.RAW, SHA_A, "disk.raw", ids["http"], "raw-img")
    assert (qcow.format, qcow.max_size_bytes, qcow.sha256) == (ImageFormat.QCOW2, 1 << 30, SHA_B)
    assert (oci.format, oci.sha256, oci.url) == (ImageFormat.CONTAINER, None, "library/alpine:3.19")
    blank, disk = state.volumes[ids["blank"]], state.volumes[ids["disk"]]
    assert (blank.origin, blank.generation, blank.max_size_bytes, blank.display_name) == (
        VolumeOrigin.BLANK, 1, 64 << 20, "scratch")
    assert (disk.origin, disk.content_tree_id, disk.readonly, disk.max_size_bytes) == (
        VolumeOrigin.DOWNLOAD, ids["qcow"], True, 2 << 30)
    app = state.apps[ids["app"]]
    assert app.display_name == "web"
    assert app.volume_refs == (ModelRef(ids["disk"], 0), ModelRef(ids["blank"], 1))
    ct = next(c for c in wire.contentInfo if c.uuid == ids["raw"])
    assert (ct.dsId, list(ct.ds_ids_list)) == (ids["http"], [ids["http"]])
    assert wire.apps[0].activate is True


def test_config_hash_follows_the_content(store: ControllerStore) -> None:
    ids = populated(store)
    h1 = config_hash(build_config(store, "dev1"))
    assert h1 == config_hash(build_config(store, "dev1"))
    assert len(h1) == 64 and int(h1, 16) >= 0
    store.touch("dev1")
    store.update_device("dev1", name="renamed")
    assert config_hash(build_config(store, "renamed")) == h1  # nothing the device runs changed
    store.update_volume(ids["blank"], max_size_bytes=128 << 20)
    assert config_hash(build_config(store, "renamed")) != h1
    with pytest.raises(NotFound):
        build_config(store, "nope")


# ---------------------------------------------------------------- reports


def vinfo(uuid: str, state: int, at: datetime, gen: int = 0, progress: int = 0, name: str = "disk") -> m.ZInfoMsg:
    msg = m.ZInfoMsg(ztype=m.ZInfoTypes.ZiVolume)
    v = msg.vinfo
    v.uuid, v.generation_count, v.state, v.progressPercentage, v.displayName = uuid, gen, state, progress, name
    v.resources.maxSizeBytes, v.resources.curSizeBytes, v.usage.refCount = 1 << 30, progress << 20, 1
    msg.atTimeStamp.CopyFrom(timestamp(at.timestamp()))
    return msg


def test_record_info_latest_wins_and_keeps_history(store: ControllerStore, clock: Clock) -> None:
    dev = store.create_device("edge")
    vol = "7b8f3a52-0c0e-4f0e-9a11-3c1d2e4f5a6b"
    store.record_info(dev.uuid, vinfo(vol, m.ZSwState.DOWNLOAD_STARTED, T0 + timedelta(seconds=1), progress=10))
    store.record_info(dev.uuid, vinfo(vol, m.ZSwState.DOWNLOAD_STARTED, T0 + timedelta(seconds=2), progress=50))
    clock.now = T0 + timedelta(minutes=1)
    store.record_info(dev.uuid, vinfo(vol, m.ZSwState.CREATED_VOLUME, T0 + timedelta(seconds=3), progress=100))
    stale = vinfo(vol, m.ZSwState.LOADING, T0 + timedelta(seconds=2, milliseconds=500), progress=70)
    assert store.record_info(dev.uuid, stale) == 0  # a retried older message changes nothing

    [rep] = store.reported(dev.uuid)
    assert (rep.kind, rep.object_key, rep.generation, rep.state_name, rep.progress) == (
        "volume", vol, 0, "CREATED_VOLUME", 100)
    assert (rep.max_size_bytes, rep.cur_size_bytes, rep.ref_count, rep.error) == (1 << 30, 100 << 20, 1, None)
    assert rep.reported_at == T0 + timedelta(seconds=3) and rep.updated_at == clock.now
    assert rep.message().state == m.ZSwState.CREATED_VOLUME
    assert [c.state_name for c in store.history(dev.uuid, "volume", vol)] == ["DOWNLOAD_STARTED", "CREATED_VOLUME"]

    # A new generation is a new object; "deleted" (identity only) removes just that one.
    store.record_info(dev.uuid, vinfo(vol, m.ZSwState.INITIAL, T0 + timedelta(seconds=4), gen=1))
    assert [(x.generation, x.state_name) for x in store.reported(dev.uuid, "volume")] == [
        (0, "CREATED_VOLUME"), (1, "INITIAL")]
    gone = m.ZInfoMsg(ztype=m.ZInfoTypes.ZiVolume)
    gone.vinfo.uuid, gone.vinfo.generation_count = vol.upper(), 0
    gone.atTimeStamp.CopyFrom(timestamp((T0 + timedelta(seconds=5)).timestamp()))
    assert store.record_info(dev.uuid, gone) == 1
    assert [(x.generation, x.state_name) for x in store.reported(dev.uuid)] == [(1, "INITIAL")]


def test_content_tree_and_blob_reports(store: ControllerStore) -> None:
    dev = store.create_device("edge")
    tree = "0d6c2a0e-5b1f-4a8e-8f3c-2b7d9e1a4c55"
    msg = m.ZInfoMsg(ztype=m.ZInfoTypes.ZiContentTree, devId=dev.uuid)
    c = msg.cinfo
    c.uuid, c.displayName, c.state, c.sha256 = tree, "alpine", m.ZSwState.ERROR, SHA_A
    c.err.description, c.err.retry_condition = "404 from datastore", "retrying"
    c.err.severity = m.Severity.SEVERITY_ERROR
    c.err.timestamp.CopyFrom(timestamp((T0 + timedelta(seconds=7)).timestamp()))
    store.record_info(dev.uuid, msg)
    blobs = m.ZInfoMsg(ztype=m.ZInfoTypes.ZiBlobList)
    blobs.binfo.blob.add(sha256=SHA_A, state=m.ZSwState.LOADED).resources.curSizeBytes = 4096
    blobs.binfo.blob.add(sha256=SHA_B.upper(), state=m.ZSwState.DOWNLOAD_STARTED, progressPercentage=30)
    assert store.record_info(dev.uuid, blobs) == 2

    [ct] = store.reported("edge", "content_tree")
    assert (ct.object_key, ct.display_name, ct.state_name, ct.max_size_bytes) == (tree, "alpine", "ERROR", None)
    assert ct.error is not None and ct.error.description == "404 from datastore"
    assert (ct.error.severity_name, ct.error.retry_condition, ct.error.time) == (
        "SEVERITY_ERROR", "retrying", T0 + timedelta(seconds=7))
    got = {(b.object_key, b.state_name, b.cur_size_bytes, b.progress) for b in store.reported("edge", "blob")}
    assert got == {(SHA_A, "LOADED", 4096, 0), (SHA_B, "DOWNLOAD_STARTED", 0, 30)}

    gone = m.ZInfoMsg(ztype=m.ZInfoTypes.ZiBlobList)
    gone.binfo.blob.add(sha256=SHA_A)
    store.record_info("edge", gone)
    assert [b.object_key for b in store.reported("edge", "blob")] == [SHA_B]
    gone_tree = m.ZInfoMsg(ztype=m.ZInfoTypes.ZiContentTree)
    gone_tree.cinfo.uuid = tree
    store.record_info("edge", gone_tree)
    assert store.reported("edge", "content_tree") == []
    assert [h.state_name for h in store.history("edge", "content_tree", tree)] == ["ERROR"]  # history stays


def test_history_is_bounded_per_object(db_url: str) -> None:  # noqa: F811
    with ControllerStore(db_url, history_limit=5) as store:
        store.migrate()
        dev = store.create_device("edge")
        a, b = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
        states = [m.ZSwState.DOWNLOAD_STARTED, m.ZSwState.VERIFYING] * 5 + [m.ZSwState.CREATED_VOLUME]
        for i, st in enumerate(states):
            store.record_info(dev.uuid, vinfo(a, st, T0 + timedelta(seconds=i)))
        store.record_info(dev.uuid, vinfo(b, m.ZSwState.INITIAL, T0))
        hist = store.history(dev.uuid, "volume", a)
        assert [h.state for h in hist] == states[-5:]
        assert hist[-1].at == T0 + timedelta(seconds=len(states) - 1)
        assert len(store.history(dev.uuid, "volume", b)) == 1
        assert store.count("state_changes") == len(states) + 1  # bounded on read; pruned in the background
        assert store.prune() == {"volume_metrics": 0, "state_changes": len(states) - 5}
        assert store.count("state_changes") == 5 + 1
        assert store.history(dev.uuid, "volume", a) == hist


def test_bad_info_messages_are_refused_whole(store: ControllerStore) -> None:
    dev = store.create_device("edge")
    blobs = m.ZInfoMsg(ztype=m.ZInfoTypes.ZiBlobList)
    blobs.binfo.blob.add(sha256=SHA_A, state=m.ZSwState.LOADED)
    blobs.binfo.blob.add(sha256="not-a-digest", state=m.ZSwState.LOADED)
    with pytest.raises(Invalid, match="not 64 hexadecimal"):
        store.record_info(dev.uuid, blobs)
    with pytest.raises(Invalid, match="not a UUID"):
        store.record_info(dev.uuid, vinfo("../etc", m.ZSwState.INITIAL, T0))
    other = vinfo("11111111-1111-4111-8111-111111111111", m.ZSwState.INITIAL, T0)
    other.devId = "33333333-3333-4333-8333-333333333333"
    with pytest.raises(Invalid, match="is for device"):
        store.record_info(dev.uuid, other)
    with pytest.raises(NotFound):
        store.record_info("44444444-4444-4444-8444-444444444444", vinfo(other.vinfo.uuid, 1, T0))
    assert store.reported(dev.uuid) == []
    assert store.record_info(dev.uuid, m.ZInfoMsg(ztype=m.ZInfoTypes.ZiDevice)) == 0


# ---------------------------------------------------------------- metrics


def metric(vol: str, at: datetime, used: int) -> m.ZMetricMsg:
    msg = m.ZMetricMsg()
    msg.atTimeStamp.CopyFrom(timestamp(at.timestamp()))
    msg.vm.add(uuid=vol, totalBytes=1 << 30, usedBytes=used, freeBytes=(1 << 30) - used, readBytes=7,
               writeBytes=9)
    return msg


def test_metrics_retention_and_per_volume_cap(db_url: str, clock: Clock) -> None:  # noqa: F811
    a, b = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
    with ControllerStore(db_url, clock=clock, metrics_per_volume=3) as store:
        store.migrate()
        dev = store.create_device("edge")
        store.record_metrics(dev.uuid, metric(a, T0 - timedelta(days=8), 1))  # already past retention
        assert store.volume_metrics(dev.uuid, a) == []
        for i in range(5):
            store.record_metrics(dev.uuid, metric(a, T0 + timedelta(minutes=i), 100 + i))
        store.record_metrics(dev.uuid, metric(b, T0, 5))
        got = store.volume_metrics(dev.uuid, a)
        assert [x.used_bytes for x in got] == [102, 103, 104]  # newest three, oldest first
        assert (got[-1].at, got[-1].free_bytes, got[-1].read_bytes, got[-1].write_bytes) == (
            T0 + timedelta(minutes=4), (1 << 30) - 104, 7, 9)
        assert [x.used_bytes for x in store.volume_metrics(dev.uuid, a, limit=2)] == [103, 104]

        clock.now = T0 + timedelta(days=7, minutes=3, seconds=30)
        store.record_metrics(dev.uuid, metric(b, clock.now, 6))
        assert [x.used_bytes for x in store.volume_metrics(dev.uuid, a)] == [104]  # older than 7 days: gone
        assert [x.used_bytes for x in store.volume_metrics(dev.uuid, b)] == [6]
        # Reads apply retention; rows go only when the background pass prunes, never on a device's post.
        assert store.count("volume_metrics") == 8
        assert store.prune() == {"volume_metrics": 6, "state_changes": 0}
        assert store.count("volume_metrics") == 2
        assert [x.used_bytes for x in store.volume_metrics(dev.uuid, a)] == [104]
        assert store.prune() == {"volume_metrics": 0, "state_changes": 0}
