"""The controller's storage API: desired objects per device, and what devices report.

Why this shape:
- Every method is one transaction and returns frozen records, never ORM objects.
- Every change to what a device should run bumps that device's
  ``config_version`` (so its config hash changes and it downloads again).
- Before committing a create or update, the store builds the config the
  device would receive and runs the device's own parser on it: the operator
  hears "sha256 is required for RAW content" now, not as a device error later.
- Refusals are exceptions with messages meant for the operator:
  :class:`NotFound`, :class:`Conflict` (in use, duplicate, already
  registered) and :class:`Invalid` (a value the device would refuse).
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection, Text, bindparam, cast, delete, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from edgevol.api import messages as m
from edgevol.controller import records as r
from edgevol.controller.configbuild import config_from_snapshot
from edgevol.controller.db import checks as ck
from edgevol.controller.db import convert as cv
from edgevol.controller.db import infomsg
from edgevol.controller.db import models as db
from edgevol.controller.db.errors import Conflict, Invalid, NotFound, StoreError
from edgevol.controller.db.session import (
    SINGLE_READ_OPTION,
    WRITE_OPTION,
    make_engine,
    migrate,
    normalize_url,
    session_factory,
)
from edgevol.model import parse
from edgevol.model.desired import ObjectKind
from edgevol.trust.pki import der_sha256

__all__ = ["UNSET", "Conflict", "ControllerStore", "Invalid", "NotFound", "StoreError"]

MAX_NAME = ck.MAX_NAME
# Volume fields that fix its content: a device applies a change of one only to a new generation.
_REGENERATING = ("content_tree_uuid", "max_size_bytes", "origin", "readonly")

T = TypeVar("T")

# The device API's one statement per request, built once (building it costs more than running it):
# the device certificate's DER hash starts with the sender hash, or its pre-0002 PEM hash is it.
_DEVICES = db.Device.__table__
_SENDER = (select(*(_DEVICES.c[f.name] for f in dataclasses.fields(r.Sender)))
           .where(((_DEVICES.c.device_cert_hash >= bindparam("lo")) & (_DEVICES.c.device_cert_hash < bindparam("hi")))
                  | (_DEVICES.c.device_cert_legacy_hash == bindparam("legacy")))
           .limit(2))
_REPORTED = db.ReportedObject.__table__
_REPORTED_ROW = (select(_REPORTED.c.id, _REPORTED.c.state, _REPORTED.c.reported_at)
                 .where(_REPORTED.c.device_uuid == bindparam("device_uuid"), _REPORTED.c.kind == bindparam("kind"),
                        _REPORTED.c.object_key == bindparam("object_key"),
                        _REPORTED.c.generation == bindparam("generation"))
                 .with_for_update())
_REPORTED_INSERT = insert(_REPORTED)
_REPORTED_UPDATE = update(_REPORTED).where(_REPORTED.c.id == bindparam("rid"))  # SET: the other parameters
_REPORTED_DELETE = delete(_REPORTED).where(_REPORTED.c.id == bindparam("rid"))
_STATE_INSERT = insert(db.StateChange.__table__)
_TOUCH = (update(_DEVICES)
          .where(_DEVICES.c.uuid == bindparam("dev"),
                 or_(_DEVICES.c.last_seen_at.is_(None), _DEVICES.c.last_seen_at < bindparam("at")))
          .values(last_seen_at=bindparam("at")))
_HASHED = (update(_DEVICES)
           .where(_DEVICES.c.uuid == bindparam("dev"), _DEVICES.c.config_version == bindparam("v"))
           .values(config_hash=bindparam("h"), config_hash_key=bindparam("k")))
_ACK = (update(_DEVICES)
        .where(_DEVICES.c.uuid == bindparam("dev"),
               or_(_DEVICES.c.config_acked_version.is_(None), _DEVICES.c.config_acked_version < bindparam("v")))
        .values(config_acked_version=bindparam("v")))


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # "leave this field as it is" in update_* calls


# ---------------------------------------------------------------- the store


class ControllerStore:
    """All controller state, in SQLite (``sqlite:///path``) or PostgreSQL (``postgresql://...``)."""

    def __init__(self, url: str, *, history_limit: int = 50,
                 metrics_retention: timedelta = timedelta(days=7), metrics_per_volume: int = 1000,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.url = normalize_url(url)
        self.engine = make_engine(self.url)
        self._sessions = session_factory(self.engine)
        self.history_limit = history_limit
        self.metrics_retention = metrics_retention
        self.metrics_per_volume = metrics_per_volume
        self._clock = clock or (lambda: datetime.now(UTC))
        self._hot = threading.local()  # see _reader
        self._hot_conns: list[Connection] = []
        self._hot_lock = threading.Lock()

    def migrate(self) -> None:
        """Create or upgrade the schema (idempotent)."""
        migrate(self.engine)

    def _reader(self) -> Connection:
        """This thread's connection for single-statement reads, kept open between requests.

        Why kept, and without a transaction (PostgreSQL autocommit; no BEGIN
        on SQLite): checking a connection out of the pool and BEGIN/ROLLBACK
        around one SELECT cost several times the SELECT itself.
        """
        conn = getattr(self._hot, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            conn = self.engine.connect()
            if self.engine.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            else:
                conn = conn.execution_options(**{SINGLE_READ_OPTION: True})
            self._hot.conn = conn
            with self._hot_lock:
                self._hot_conns[:] = [c for c in self._hot_conns if not c.closed] + [conn]
        return conn

    def close(self) -> None:
        with self._hot_lock:
            for conn in self._hot_conns:
                conn.close()
            self._hot_conns.clear()
        self.engine.dispose()

    def __enter__(self) -> ControllerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def now(self) -> datetime:
        return self._clock().astimezone(UTC)

    # -- transactions

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._sessions() as s:
            yield s

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._sessions() as s:
            s.connection(execution_options={WRITE_OPTION: True})
            try:
                yield s
                s.commit()
            except IntegrityError as exc:
                s.rollback()
                # Checks before each write give the clear messages; this catches races.
                raise Conflict(f"the change conflicts with what is stored (a concurrent change?): "
                               f"{exc.orig}") from None

    # -- lookups inside a session

    def _device(self, s: Session, ref: str) -> db.Device:
        q = select(db.Device)
        found = None
        if ck.is_uuid(ref):
            found = s.scalars(q.where(db.Device.uuid == ref.lower())).one_or_none()
        if found is None:
            found = s.scalars(q.where(db.Device.name == ref)).one_or_none()
        if found is None:
            raise NotFound(f"device {ref!r} not found")
        return found

    def _datastore(self, s: Session, ref: str) -> db.Datastore:
        found = s.get(db.Datastore, ref.lower()) if ck.is_uuid(ref) else None
        if found is None:
            found = s.scalars(select(db.Datastore).where(db.Datastore.name == ref)).one_or_none()
        if found is None:
            raise NotFound(f"datastore {ref!r} not found")
        return found

    def _owned(self, s: Session, model: type[T], what: str, ref: str, device: str | None) -> T:
        """A content tree, volume or app by uuid, or by name on ``device``."""
        dev = self._device(s, device) if device is not None else None
        found: Any = s.get(model, ref.lower()) if ck.is_uuid(ref) else None
        if found is not None and dev is not None and found.device_uuid != dev.uuid:
            found = None
        if found is None and dev is not None:
            found = s.scalars(select(model).where(model.device_uuid == dev.uuid,  # type: ignore[attr-defined]
                                                  model.name == ref)).one_or_none()  # type: ignore[attr-defined]
        if found is None:
            where = f" on device {device!r}" if device is not None else ""
            hint = "" if device is not None or ck.is_uuid(ref) else " (give the device to look up by name)"
            raise NotFound(f"{what} {ref!r} not found{where}{hint}")
        return found  # type: ignore[no-any-return]

    def _app_rec(self, s: Session, a: db.App) -> r.App:
        refs = s.scalars(select(db.AppVolumeRef).where(db.AppVolumeRef.app_uuid == a.uuid)
                         .order_by(db.AppVolumeRef.position)).all()
        return r.App(uuid=a.uuid, device_uuid=a.device_uuid, name=a.name, activate=a.activate,
                     purge_counter=a.purge_counter,
                     volume_refs=tuple(r.VolumeRef(x.volume_uuid, x.generation_count) for x in refs),
                     created_at=a.created_at)

    def _name_free(self, s: Session, model: Any, what: str, name: str, device_uuid: str | None = None,
                   but: str | None = None) -> None:
        q = select(model.uuid).where(model.name == name)
        if device_uuid is not None:
            q = q.where(model.device_uuid == device_uuid)
        if but is not None:
            q = q.where(model.uuid != but)
        if s.scalars(q).first() is not None:
            where = " on this device" if device_uuid is not None else ""
            raise Conflict(f"a {what} named {name!r} already exists{where}")

    def _bump(self, s: Session, device_uuids: Iterable[str]) -> None:
        ids = sorted(set(device_uuids))
        if ids:
            s.execute(update(db.Device).where(db.Device.uuid.in_(ids))
                      .values(config_version=db.Device.config_version + 1))

    def _snapshot(self, s: Session, dev: db.Device) -> r.ConfigSnapshot:
        trees = s.scalars(select(db.ContentTree).where(db.ContentTree.device_uuid == dev.uuid)
                          .order_by(db.ContentTree.name, db.ContentTree.uuid)).all()
        ds_ids = {t.datastore_uuid for t in trees}
        stores = s.scalars(select(db.Datastore).where(db.Datastore.uuid.in_(ds_ids))
                           .order_by(db.Datastore.name, db.Datastore.uuid)).all() if ds_ids else []
        vols = s.scalars(select(db.Volume).where(db.Volume.device_uuid == dev.uuid)
                         .order_by(db.Volume.name, db.Volume.uuid)).all()
        apps = s.scalars(select(db.App).where(db.App.device_uuid == dev.uuid)
                         .order_by(db.App.name, db.App.uuid)).all()
        return r.ConfigSnapshot(device=cv.device_rec(dev), datastores=tuple(cv.ds_rec(d) for d in stores),
                                content_trees=tuple(cv.ct_rec(t) for t in trees),
                                volumes=tuple(cv.vol_rec(v) for v in vols),
                                apps=tuple(self._app_rec(s, a) for a in apps))

    def _validate(self, s: Session, device_uuid: str, touched: set[tuple[ObjectKind, str]], label: str) -> None:
        """Refuse the change if the device's parser would reject one of the ``touched`` objects."""
        s.flush()
        dev = s.get(db.Device, device_uuid)
        assert dev is not None
        s.refresh(dev)
        state = parse.parse_config(config_from_snapshot(self._snapshot(s, dev)))
        bad = [e.message for e in state.errors if (e.kind, e.object_id) in touched]
        if bad:
            raise Invalid(f"{label}: {'; '.join(bad)}")

    # ================================================================ devices

    def create_device(self, name: str, serial: str = "", onboard_cert_pem: bytes | None = None, *,
                      uuid: str | None = None) -> r.Device:
        """A device the controller expects; it registers later with ``onboard_cert_pem`` and ``serial``."""
        ck.check_name(name, "device")
        if len(serial) > MAX_NAME:
            raise Invalid(f"serial is longer than {MAX_NAME} characters")
        pem = ck.check_cert_pem(onboard_cert_pem, "onboarding certificate") if onboard_cert_pem is not None else None
        digest = der_sha256(pem) if pem is not None else None
        with self._write() as s:
            self._name_free(s, db.Device, "device", name)
            dev_uuid = ck.new_uuid(uuid, "device")
            if s.get(db.Device, dev_uuid) is not None:
                raise Conflict(f"a device with uuid {dev_uuid} already exists")
            if digest is not None:
                other = s.scalars(select(db.Device).where(db.Device.onboard_cert_hash == digest,
                                                          db.Device.serial == serial)).first()
                if other is not None:
                    raise Conflict(f"device {other.name!r} already uses this onboarding certificate "
                                   f"with serial {serial!r}")
            dev = db.Device(uuid=dev_uuid, name=name, serial=serial, onboard_cert_pem=pem,
                            onboard_cert_hash=digest, created_at=self.now(), config_version=1)
            s.add(dev)
            s.flush()
            return cv.device_rec(dev)

    def get_device(self, ref: str) -> r.Device:
        """By uuid or name."""
        with self._read() as s:
            return cv.device_rec(self._device(s, ref))

    def list_devices(self) -> list[r.Device]:
        with self._read() as s:
            return [cv.device_rec(d) for d in s.scalars(select(db.Device).order_by(db.Device.name))]

    def update_device(self, ref: str, *, name: str = UNSET, serial: str = UNSET,
                      onboard_cert_pem: bytes | None = UNSET) -> r.Device:
        """Rename, or change what the device onboards with (nothing the device's config carries)."""
        with self._write() as s:
            dev = self._device(s, ref)
            if name is not UNSET:
                self._name_free(s, db.Device, "device", ck.check_name(name, "device"), but=dev.uuid)
                dev.name = name
            if serial is not UNSET:
                if len(serial) > MAX_NAME:
                    raise Invalid(f"serial is longer than {MAX_NAME} characters")
                dev.serial = serial
            if onboard_cert_pem is not UNSET:
                pem = ck.check_cert_pem(onboard_cert_pem, "onboarding certificate") if onboard_cert_pem else None
                dev.onboard_cert_pem = pem
                dev.onboard_cert_hash = der_sha256(pem) if pem else None
                dev.onboard_cert_legacy_hash = None
            if dev.onboard_cert_hash is not None:
                other = s.scalars(select(db.Device).where(db.Device.onboard_cert_hash == dev.onboard_cert_hash,
                                                          db.Device.serial == dev.serial,
                                                          db.Device.uuid != dev.uuid)).first()
                if other is not None:
                    raise Conflict(f"device {other.name!r} already uses this onboarding certificate "
                                   f"with serial {dev.serial!r}")
            s.flush()
            return cv.device_rec(dev)

    def delete_device(self, ref: str) -> None:
        """Remove the device with everything it owns and everything it reported."""
        with self._write() as s:
            dev = self._device(s, ref)
            s.execute(delete(db.Device).where(db.Device.uuid == dev.uuid))

    def register(self, onboard_cert_hash: bytes, serials: str | Sequence[str], device_cert_pem: bytes) -> r.Device:
        """Bind a device certificate to the device expecting this onboarding cert and a serial.

        ``serials`` are tried in order, as Adam tries ``serial`` then
        ``softSerial`` (pkg/server/commonHandler.go, registerProcess).
        Idempotent for the same device certificate (a device retries when it
        missed the answer); :class:`Conflict` for a different one.
        """
        if len(onboard_cert_hash) not in (16, 32):
            raise Invalid("the onboarding certificate hash must be 16 or 32 bytes of sha256")
        candidates = [serials] if isinstance(serials, str) else [x for x in serials if x] or [""]
        pem = ck.check_cert_pem(device_cert_pem, "device certificate")
        digest = der_sha256(pem)
        with self._write() as s:
            found: Sequence[db.Device] = []
            for serial in candidates:
                found = s.scalars(select(db.Device).where(self._cert_match(db.Device.onboard_cert_hash,
                                                                           db.Device.onboard_cert_legacy_hash,
                                                                           onboard_cert_hash),
                                                          db.Device.serial == serial).with_for_update()).all()
                if found:
                    break
            if not found:
                raise NotFound(f"no device expects onboarding certificate {onboard_cert_hash.hex()} "
                               f"with serial {' or '.join(repr(x) for x in candidates)}")
            if len(found) > 1:
                raise Conflict("the short onboarding certificate hash matches several devices; use 32 bytes")
            dev = found[0]
            if dev.device_cert_hash == digest:
                return cv.device_rec(dev)
            if dev.device_cert_pem is not None:
                raise Conflict(f"device {dev.name!r} is already registered with a different certificate")
            other = s.scalars(select(db.Device).where(db.Device.device_cert_hash == digest)).first()
            if other is not None:
                raise Conflict(f"this device certificate is already registered to device {other.name!r}")
            dev.device_cert_pem, dev.device_cert_hash, dev.registered_at = pem, digest, self.now()
            dev.device_cert_legacy_hash = None
            s.flush()
            return cv.device_rec(dev)

    @staticmethod
    def _cert_match(column: Any, legacy_column: Any, cert_hash: bytes) -> Any:
        """The certificate's DER hash starts with ``cert_hash``, or its pre-0002 PEM hash is it."""
        return ck.prefix_range(column, cert_hash) | (legacy_column == cert_hash)

    def device_by_cert_hash(self, cert_hash: bytes) -> r.Device | None:
        """The registered device whose certificate's DER sha256 starts with ``cert_hash`` (16 or 32 bytes)."""
        if len(cert_hash) not in (16, 32):
            return None
        with self._read() as s:
            found = s.scalars(select(db.Device).where(self._cert_match(db.Device.device_cert_hash,
                                                                       db.Device.device_cert_legacy_hash, cert_hash))
                              .limit(2)).all()
            return cv.device_rec(found[0]) if len(found) == 1 else None

    def sender(self, cert_hash: bytes) -> r.Sender | None:
        """:meth:`device_by_cert_hash` with the integrity token, in one SQL statement.

        Every device request starts here, so it is one indexed SELECT on a
        bare connection (no ORM session, no BEGIN on SQLite). Never cached:
        this read is what makes a deleted or re-keyed device refused at once
        by every controller process.
        """
        if len(cert_hash) not in (16, 32):
            return None
        params = {"lo": cert_hash, "hi": ck.prefix_end(cert_hash), "legacy": cert_hash}
        for attempt in (1, 2):  # a connection the database dropped (it restarted): once more, on a new one
            conn = self._reader()
            try:
                rows = conn.execute(_SENDER, params).all()
                conn.commit()  # ends nothing on the database: there is no transaction
                break
            except DBAPIError as exc:
                self._hot.conn = None
                conn.close()
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        if len(rows) != 1:
            return None
        return r.Sender(**rows[0]._mapping)

    def onboarding_cert(self, cert_hash: bytes) -> bytes | None:
        """The onboarding certificate PEM whose DER sha256 starts with ``cert_hash`` (to verify a register call)."""
        if len(cert_hash) not in (16, 32):
            return None
        # A batch of thousands of devices shares one onboarding certificate: every query here reads one row
        # or one end of an index range, never the batch.
        dev = db.Device
        with self._read() as s:
            found: set[bytes] = set()
            in_range = select(dev.onboard_cert_hash).where(ck.prefix_range(dev.onboard_cert_hash, cert_hash)).limit(1)
            low = s.scalars(in_range.order_by(dev.onboard_cert_hash)).first()  # both ends: PostgreSQL has no
            high = s.scalars(in_range.order_by(dev.onboard_cert_hash.desc())).first()  # min() of bytea
            if low is not None:
                if low != high:
                    return None  # a 16-byte prefix of two different certificates
                found.add(s.scalars(select(dev.onboard_cert_pem).where(dev.onboard_cert_hash == low).limit(1)).one())
            legacy = s.scalars(select(dev.onboard_cert_pem).where(dev.onboard_cert_legacy_hash == cert_hash)
                               .limit(1)).first()
            if legacy is not None:
                found.add(legacy)
            return found.pop() if len(found) == 1 else None

    # -- attestation (Adam's no-TPM path: pkg/server/attestation.go, attestProcess)

    def new_attest_nonce(self, device: str, nonce: bytes) -> None:
        """Remember the nonce just given out; a new attestation round starts."""
        with self._write() as s:
            self._device(s, device).attest_nonce = nonce

    def integrity_token(self, device: str, *, issue: Callable[[], bytes] | None = None) -> bytes | None:
        """The device's integrity token; with ``issue``, one is made (once) if there is none yet.

        The token stays the same across attestations, as Adam keeps it, so a
        device that attests again while another of its requests is in flight
        does not invalidate that request.
        """
        with (self._write() if issue is not None else self._read()) as s:
            dev = self._device(s, device)
            if dev.integrity_token is None and issue is not None:
                dev.integrity_token = issue()
            return dev.integrity_token

    def attest_nonce(self, device: str) -> bytes | None:
        with self._read() as s:
            return self._device(s, device).attest_nonce

    def storage_keys(self, device: str) -> bytes | None:
        """The serialized AttestStorageKeys the device escrowed, if any."""
        with self._read() as s:
            return self._device(s, device).storage_keys

    def set_device_ecdh_cert(self, device: str, cert_pem: bytes) -> None:
        """The device's ECDH certificate (checked by the caller): credentials are encrypted for it from now on.

        A new certificate changes what the device must be sent, so its config version is bumped.
        """
        with self._write() as s:
            dev = self._device(s, device)
            if dev.device_ecdh_cert_pem != cert_pem:
                dev.device_ecdh_cert_pem = cert_pem
                self._bump(s, [dev.uuid])

    def set_storage_keys(self, device: str, keys: bytes) -> None:
        with self._write() as s:
            self._device(s, device).storage_keys = keys

    def ack_config(self, device: str, version: int) -> None:
        """The device runs config ``version`` (it asked with that config's hash and got a 304)."""
        self.record_contacts({}, {device: version})

    def touch(self, ref: str) -> None:
        """Note that the device was just heard from."""
        with self._read() as s:
            dev_uuid = self._device(s, ref).uuid
        self.record_contacts({dev_uuid: self.now()}, {})

    def record_contacts(self, seen: dict[str, datetime], acked: dict[str, int],
                        hashed: dict[str, tuple[int, str, str]] | None = None) -> None:
        """When devices were last heard from, the config versions they acknowledged, and the hashes of configs
        built for them (device -> (version, key, hash)): many, one transaction.

        None goes backwards (a hash is kept only while its version is current), so flushes from several
        processes may land in any order.
        """
        if not seen and not acked and not hashed:
            return
        with self.engine.connect() as conn:
            conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():  # sorted: one lock order for every process
                if seen:
                    conn.execute(_TOUCH, [{"dev": dev, "at": at} for dev, at in sorted(seen.items())])
                if acked:
                    conn.execute(_ACK, [{"dev": dev, "v": v} for dev, v in sorted(acked.items())])
                if hashed:
                    conn.execute(_HASHED, [{"dev": dev, "v": v, "k": k, "h": h}
                                           for dev, (v, k, h) in sorted(hashed.items())])

    def config_snapshot(self, device: str) -> r.ConfigSnapshot:
        """Everything the device's config is built from (see :func:`configbuild.build_config`)."""
        with self._read() as s:
            return self._snapshot(s, self._device(s, device))

    # ================================================================ datastores

    def _validate_datastore(self, ds: db.Datastore) -> None:
        cfg = m.EdgeDevConfig()
        cfg.datastores.add(id=ds.uuid, dType=ds.type, fqdn=ds.fqdn, apiKey=ds.api_key, password=ds.password,
                           dpath=ds.dpath, region=ds.region, dsCertPEM=[p.encode() for p in ds.ca_pems])
        errors = parse.parse_config(cfg).errors
        if errors:
            raise Invalid(f"datastore {ds.name!r}: {'; '.join(e.message for e in errors)}")

    def create_datastore(self, name: str, type: int | str, fqdn: str, *, dpath: str = "", api_key: str = "",
                         password: str = "", region: str = "", ca_pems: Sequence[bytes | str] = (),
                         uuid: str | None = None) -> r.Datastore:
        """A datastore any device's content trees can use; ``type`` is a DsType number or name."""
        ds = db.Datastore(uuid=ck.new_uuid(uuid, "datastore"), name=ck.check_name(name, "datastore"),
                          type=ck.enum_number(m.DsType, type, "datastore type"), fqdn=fqdn, dpath=dpath, api_key=api_key,
                          password=password, region=region, ca_pems=ck.check_ca_pems(ca_pems), created_at=self.now())
        self._validate_datastore(ds)
        with self._write() as s:
            self._name_free(s, db.Datastore, "datastore", name)
            if s.get(db.Datastore, ds.uuid) is not None:
                raise Conflict(f"a datastore with uuid {ds.uuid} already exists")
            s.add(ds)
            s.flush()
            return cv.ds_rec(ds)

    def get_datastore(self, ref: str) -> r.Datastore:
        with self._read() as s:
            return cv.ds_rec(self._datastore(s, ref))

    def list_datastores(self) -> list[r.Datastore]:
        with self._read() as s:
            return [cv.ds_rec(d) for d in s.scalars(select(db.Datastore).order_by(db.Datastore.name))]

    def update_datastore(self, ref: str, *, name: str = UNSET, type: int | str = UNSET, fqdn: str = UNSET,
                         dpath: str = UNSET, api_key: str = UNSET, password: str = UNSET, region: str = UNSET,
                         ca_pems: Sequence[bytes | str] = UNSET) -> r.Datastore:
        """Change some fields; every device with a content tree on it gets a new config version."""
        with self._write() as s:
            ds = self._datastore(s, ref)
            new: dict[str, Any] = {}
            if name is not UNSET:
                self._name_free(s, db.Datastore, "datastore", ck.check_name(name, "datastore"), but=ds.uuid)
                new["name"] = name
            if type is not UNSET:
                new["type"] = ck.enum_number(m.DsType, type, "datastore type")
            if ca_pems is not UNSET:
                new["ca_pems"] = ck.check_ca_pems(ca_pems)
            for key, value in (("fqdn", fqdn), ("dpath", dpath), ("api_key", api_key), ("password", password),
                               ("region", region)):
                if value is not UNSET:
                    new[key] = value
            changed = {k: v for k, v in new.items() if getattr(ds, k) != v}
            for key, value in changed.items():
                setattr(ds, key, value)
            self._validate_datastore(ds)
            if set(changed) - {"name"}:  # the name is not part of any config
                users = s.scalars(select(db.ContentTree).where(db.ContentTree.datastore_uuid == ds.uuid)).all()
                by_device: dict[str, set[tuple[ObjectKind, str]]] = {}
                for t in users:
                    by_device.setdefault(t.device_uuid, {(ObjectKind.DATASTORE, ds.uuid)}).add(
                        (ObjectKind.CONTENT_TREE, t.uuid))
                self._bump(s, by_device)
                for dev_uuid, touched in by_device.items():
                    self._validate(s, dev_uuid, touched, f"datastore {ds.name!r}")
            s.flush()
            return cv.ds_rec(ds)

    def delete_datastore(self, ref: str) -> None:
        """Refused while a content tree uses it."""
        with self._write() as s:
            ds = self._datastore(s, ref)
            users = s.execute(select(db.Device.name, db.ContentTree.name)
                              .join(db.Device, db.Device.uuid == db.ContentTree.device_uuid)
                              .where(db.ContentTree.datastore_uuid == ds.uuid)
                              .order_by(db.Device.name, db.ContentTree.name)).all()
            if users:
                names = ", ".join(f"{d}/{t}" for d, t in users)
                raise Conflict(f"datastore {ds.name!r} is used by content trees {names}; delete them first")
            s.delete(ds)

    # ================================================================ content trees

    def create_content_tree(self, device: str, name: str, datastore: str, url: str, format: int | str, *,
                            sha256: str | None = None, max_size_bytes: int = 0, generation_count: int = 0,
                            uuid: str | None = None, signature: bytes | None = None, signer_cert_url: str = "",
                            intermediate_cert_url: str = "", sign_key_pem: bytes | None = None) -> r.ContentTree:
        """Content ``url`` (relative to the datastore) for ``device``; ``format`` is a Format number or name.

        ``signature`` (or ``sign_key_pem``, to sign here) with ``signer_cert_url`` makes it signed content.
        """
        ck.check_name(name, "content tree")
        fmt = ck.format_number(format)
        digest, size = ck.check_sha256(sha256), ck.check_size(max_size_bytes, "max_size_bytes")
        gen = ck.check_size(generation_count, "generation_count")
        signer, inter, sig = ck.siginfo(digest, signature, signer_cert_url, intermediate_cert_url, sign_key_pem)
        with self._write() as s:
            dev = self._device(s, device)
            ds = self._datastore(s, datastore)
            self._name_free(s, db.ContentTree, "content tree", name, dev.uuid)
            ct_uuid = ck.new_uuid(uuid, "content tree")
            if s.get(db.ContentTree, ct_uuid) is not None:
                raise Conflict(f"a content tree with uuid {ct_uuid} already exists")
            ct = db.ContentTree(uuid=ct_uuid, device_uuid=dev.uuid, name=name, datastore_uuid=ds.uuid, url=url,
                                format=fmt, sha256=digest, max_size_bytes=size, generation_count=gen,
                                created_at=self.now(), signer_cert_url=signer, intermediate_cert_url=inter,
                                signature=sig)
            s.add(ct)
            self._bump(s, [dev.uuid])
            self._validate(s, dev.uuid, {(ObjectKind.CONTENT_TREE, ct.uuid)}, f"content tree {name!r}")
            return cv.ct_rec(ct)

    def get_content_tree(self, ref: str, device: str | None = None) -> r.ContentTree:
        """By uuid, or by name on ``device``."""
        with self._read() as s:
            return cv.ct_rec(self._owned(s, db.ContentTree, "content tree", ref, device))

    def list_content_trees(self, device: str) -> list[r.ContentTree]:
        with self._read() as s:
            dev = self._device(s, device)
            return [cv.ct_rec(t) for t in s.scalars(select(db.ContentTree).where(db.ContentTree.device_uuid == dev.uuid)
                                                  .order_by(db.ContentTree.name))]

    def update_content_tree(self, ref: str, *, device: str | None = None, name: str = UNSET,
                            datastore: str = UNSET, url: str = UNSET, format: int | str = UNSET,
                            sha256: str | None = UNSET, max_size_bytes: int = UNSET,
                            generation_count: int = UNSET, signature: bytes | None = UNSET,
                            signer_cert_url: str = UNSET, intermediate_cert_url: str = UNSET,
                            sign_key_pem: bytes | None = None) -> r.ContentTreeUpdate:
        """Change some fields. The device needs no generation bump for a content tree: it fetches it
        again whenever what the content is changes, as EVE's volumemgr deletes and recreates a content
        tree whose URL, format or sha256 changed (pkg/pillar/cmd/volumemgr/handlecontent.go:53-62).
        Volumes already made from it keep their content until they are purged; the answer names them.
        """
        with self._write() as s:
            ct = self._owned(s, db.ContentTree, "content tree", ref, device)
            new: dict[str, Any] = {}
            if name is not UNSET:
                self._name_free(s, db.ContentTree, "content tree", ck.check_name(name, "content tree"),
                                ct.device_uuid, but=ct.uuid)
                new["name"] = name
            if datastore is not UNSET:
                new["datastore_uuid"] = self._datastore(s, datastore).uuid
            if url is not UNSET:
                new["url"] = url
            if format is not UNSET:
                new["format"] = ck.format_number(format)
            if sha256 is not UNSET:
                new["sha256"] = ck.check_sha256(sha256)
            if max_size_bytes is not UNSET:
                new["max_size_bytes"] = ck.check_size(max_size_bytes, "max_size_bytes")
            if generation_count is not UNSET:
                new["generation_count"] = ck.check_size(generation_count, "generation_count")
            if sign_key_pem is not None or any(v is not UNSET for v in (signature, signer_cert_url,
                                                                        intermediate_cert_url)):
                # a new siginfo is given whole; a re-signature needs the (new) sha256
                new["signer_cert_url"], new["intermediate_cert_url"], new["signature"] = ck.siginfo(
                    new.get("sha256", ct.sha256), None if signature is UNSET else signature,
                    ct.signer_cert_url if signer_cert_url is UNSET else signer_cert_url,
                    ct.intermediate_cert_url if intermediate_cert_url is UNSET else intermediate_cert_url,
                    sign_key_pem)
            changed = {k: v for k, v in new.items() if getattr(ct, k) != v}
            if changed:
                for key, value in changed.items():
                    setattr(ct, key, value)
                self._bump(s, [ct.device_uuid])
                self._validate(s, ct.device_uuid, {(ObjectKind.CONTENT_TREE, ct.uuid)},
                               f"content tree {ct.name!r}")
            refetched = bool(set(changed) - {"name"})
            users = s.scalars(select(db.Volume.name).where(db.Volume.content_tree_uuid == ct.uuid)
                              .order_by(db.Volume.name)).all() if refetched else []
            return r.ContentTreeUpdate(cv.ct_rec(ct), refetched=refetched, volumes_keeping_content=tuple(users))

    def delete_content_tree(self, ref: str, device: str | None = None) -> None:
        """Refused while a volume is made from it."""
        with self._write() as s:
            ct = self._owned(s, db.ContentTree, "content tree", ref, device)
            users = s.scalars(select(db.Volume.name).where(db.Volume.content_tree_uuid == ct.uuid)
                              .order_by(db.Volume.name)).all()
            if users:
                raise Conflict(f"content tree {ct.name!r} is used by volumes {', '.join(users)}; "
                               "delete them first")
            s.delete(ct)
            self._bump(s, [ct.device_uuid])

    # ================================================================ volumes

    def create_volume(self, device: str, name: str, *, max_size_bytes: int = 0, content_tree: str | None = None,
                      readonly: bool = False, generation_count: int = 0, uuid: str | None = None) -> r.Volume:
        """A blank volume, or one made from ``content_tree`` (uuid or name on the same device)."""
        ck.check_name(name, "volume")
        size, gen = ck.check_size(max_size_bytes, "max_size_bytes"), ck.check_size(generation_count, "generation_count")
        with self._write() as s:
            dev = self._device(s, device)
            tree = self._owned(s, db.ContentTree, "content tree", content_tree, dev.uuid) if content_tree else None
            self._name_free(s, db.Volume, "volume", name, dev.uuid)
            vol_uuid = ck.new_uuid(uuid, "volume")
            if s.get(db.Volume, vol_uuid) is not None:
                raise Conflict(f"a volume with uuid {vol_uuid} already exists")
            vol = db.Volume(uuid=vol_uuid, device_uuid=dev.uuid, name=name,
                            origin="download" if tree else "blank", content_tree_uuid=tree.uuid if tree else None,
                            max_size_bytes=size, readonly=bool(readonly), generation_count=gen,
                            created_at=self.now())
            s.add(vol)
            self._bump(s, [dev.uuid])
            self._validate(s, dev.uuid, {(ObjectKind.VOLUME, vol.uuid)}, f"volume {name!r}")
            return cv.vol_rec(vol)

    def get_volume(self, ref: str, device: str | None = None) -> r.Volume:
        with self._read() as s:
            return cv.vol_rec(self._owned(s, db.Volume, "volume", ref, device))

    def list_volumes(self, device: str) -> list[r.Volume]:
        with self._read() as s:
            dev = self._device(s, device)
            return [cv.vol_rec(v) for v in s.scalars(select(db.Volume).where(db.Volume.device_uuid == dev.uuid)
                                                   .order_by(db.Volume.name))]

    def update_volume(self, ref: str, *, device: str | None = None, name: str = UNSET,
                      max_size_bytes: int = UNSET, readonly: bool = UNSET,
                      content_tree: str | None = UNSET, purge: bool = True) -> r.VolumeUpdate:
        """Change some fields; ``content_tree=None`` makes it blank.

        A device never changes the size, read-only flag or origin of a volume it
        has: without a generation bump it holds the volume in error ("Need volume
        regeneration ... generation counter not incremented", EVE's volumemgr,
        pkg/pillar/cmd/volumemgr/handlevolume.go:48-59 and quantifyChanges at :408).
        So such a change is made together with what :meth:`purge_volume` does, in
        the same transaction: a new generation, and the apps that follow the
        volume purged to it. With ``purge=False`` it is refused (:class:`Conflict`)
        instead. A change of the name alone never makes a new generation.
        """
        with self._write() as s:
            vol = self._owned(s, db.Volume, "volume", ref, device)
            new: dict[str, Any] = {}
            if name is not UNSET:
                self._name_free(s, db.Volume, "volume", ck.check_name(name, "volume"), vol.device_uuid, but=vol.uuid)
                new["name"] = name
            if max_size_bytes is not UNSET:
                new["max_size_bytes"] = ck.check_size(max_size_bytes, "max_size_bytes")
            if readonly is not UNSET:
                new["readonly"] = bool(readonly)
            if content_tree is not UNSET:
                tree = (self._owned(s, db.ContentTree, "content tree", content_tree, vol.device_uuid)
                        if content_tree else None)
                new["content_tree_uuid"] = tree.uuid if tree else None
                new["origin"] = "download" if tree else "blank"
            changed = {k: v for k, v in new.items() if getattr(vol, k) != v}
            regenerate = sorted(k for k in changed if k in _REGENERATING)
            previous = vol.generation_count
            if regenerate and not purge:
                what = ", ".join(f"{k} from {getattr(vol, k)} to {changed[k]}" for k in regenerate)
                users = self._following_apps(s, vol)
                raise Conflict(f"volume {vol.name!r}: changing {what} needs a new generation of the volume: a device "
                               "never changes an existing volume in place (it would hold it in error, 'Need volume "
                               "regeneration ... generation counter not incremented'); allow the purge to create "
                               f"generation {previous + 1} afresh" + (f" and purge apps {', '.join(users)} to it"
                                                                      if users else ""))
            purged: tuple[str, ...] = ()
            if changed:
                for key, value in changed.items():
                    setattr(vol, key, value)
                if regenerate:
                    purged = self._regenerate(s, vol)
                self._bump(s, [vol.device_uuid])
                self._validate(s, vol.device_uuid, {(ObjectKind.VOLUME, vol.uuid)}, f"volume {vol.name!r}")
            return r.VolumeUpdate(cv.vol_rec(vol), regenerated_from=previous if regenerate else None,
                                  purged_apps=purged)

    def _following_apps(self, s: Session, vol: db.Volume) -> list[str]:
        """Names of the apps whose refs follow the volume's current generation."""
        return list(s.scalars(select(db.App.name).join(db.AppVolumeRef, db.AppVolumeRef.app_uuid == db.App.uuid)
                              .where(db.AppVolumeRef.volume_uuid == vol.uuid,
                                     db.AppVolumeRef.generation_count == vol.generation_count)
                              .distinct().order_by(db.App.name)).all())

    def _regenerate(self, s: Session, vol: db.Volume) -> tuple[str, ...]:
        """Bump the volume's generation; the app refs that followed the old one move with a purge counter bump.

        Returns the names of the apps purged.
        """
        old = vol.generation_count
        purged = tuple(self._following_apps(s, vol))
        vol.generation_count = old + 1
        users = select(db.AppVolumeRef.app_uuid).where(db.AppVolumeRef.volume_uuid == vol.uuid,
                                                       db.AppVolumeRef.generation_count == old)
        s.execute(update(db.App).where(db.App.uuid.in_(users))
                  .values(purge_counter=db.App.purge_counter + 1).execution_options(synchronize_session=False))
        s.execute(update(db.AppVolumeRef).where(db.AppVolumeRef.volume_uuid == vol.uuid,
                                                db.AppVolumeRef.generation_count == old)
                  .values(generation_count=old + 1).execution_options(synchronize_session=False))
        return purged

    def purge_volume(self, ref: str, device: str | None = None) -> r.Volume:
        """Ask the device to recreate the volume from scratch: a new generation.

        App references that followed the old generation move to the new one
        and those apps' purge counters are bumped: a device moves an app to a
        new generation only together with a purge counter bump, and keeps the
        old generation serving until the new one is ready.
        """
        with self._write() as s:
            vol = self._owned(s, db.Volume, "volume", ref, device)
            self._regenerate(s, vol)
            self._bump(s, [vol.device_uuid])
            s.flush()
            return cv.vol_rec(vol)

    def delete_volume(self, ref: str, device: str | None = None) -> None:
        """Refused while an app refers to it."""
        with self._write() as s:
            vol = self._owned(s, db.Volume, "volume", ref, device)
            users = s.scalars(select(db.App.name).join(db.AppVolumeRef, db.AppVolumeRef.app_uuid == db.App.uuid)
                              .where(db.AppVolumeRef.volume_uuid == vol.uuid).distinct()
                              .order_by(db.App.name)).all()
            if users:
                raise Conflict(f"volume {vol.name!r} is used by apps {', '.join(users)}; "
                               "remove it from them first")
            s.delete(vol)
            self._bump(s, [vol.device_uuid])

    # ================================================================ apps

    def _set_refs(self, s: Session, app: db.App, volumes: Sequence[str | tuple[str, int]]) -> None:
        rows, seen = [], set()
        for pos, item in enumerate(volumes):
            ref, gen = (item, None) if isinstance(item, str) else item
            vol = self._owned(s, db.Volume, "volume", ref, app.device_uuid)
            if vol.uuid in seen:
                raise Invalid(f"volume {vol.name!r} is listed twice")
            seen.add(vol.uuid)
            gen = vol.generation_count if gen is None else ck.check_size(gen, "volume ref generation")
            rows.append(db.AppVolumeRef(app_uuid=app.uuid, position=pos, device_uuid=app.device_uuid,
                                        volume_uuid=vol.uuid, generation_count=gen))
        s.execute(delete(db.AppVolumeRef).where(db.AppVolumeRef.app_uuid == app.uuid))
        s.add_all(rows)

    def create_app(self, device: str, name: str, *, activate: bool = True,
                   volumes: Sequence[str | tuple[str, int]] = (), uuid: str | None = None) -> r.App:
        """An app instance using ``volumes`` (uuid/name, or (uuid/name, generation); default: current)."""
        ck.check_name(name, "app")
        with self._write() as s:
            dev = self._device(s, device)
            self._name_free(s, db.App, "app", name, dev.uuid)
            app_uuid = ck.new_uuid(uuid, "app")
            if s.get(db.App, app_uuid) is not None:
                raise Conflict(f"an app with uuid {app_uuid} already exists")
            app = db.App(uuid=app_uuid, device_uuid=dev.uuid, name=name, activate=bool(activate), purge_counter=0,
                         created_at=self.now())
            s.add(app)
            s.flush()
            self._set_refs(s, app, volumes)
            self._bump(s, [dev.uuid])
            self._validate(s, dev.uuid, {(ObjectKind.APP, app.uuid)}, f"app {name!r}")
            return self._app_rec(s, app)

    def get_app(self, ref: str, device: str | None = None) -> r.App:
        with self._read() as s:
            return self._app_rec(s, self._owned(s, db.App, "app", ref, device))

    def list_apps(self, device: str) -> list[r.App]:
        with self._read() as s:
            dev = self._device(s, device)
            return [self._app_rec(s, a) for a in s.scalars(select(db.App).where(db.App.device_uuid == dev.uuid)
                                                           .order_by(db.App.name))]

    def update_app(self, ref: str, *, device: str | None = None, name: str = UNSET,
                   activate: bool = UNSET) -> r.App:
        with self._write() as s:
            app = self._owned(s, db.App, "app", ref, device)
            changed = False
            if name is not UNSET and name != app.name:
                self._name_free(s, db.App, "app", ck.check_name(name, "app"), app.device_uuid, but=app.uuid)
                app.name, changed = name, True
            if activate is not UNSET and bool(activate) != app.activate:
                app.activate, changed = bool(activate), True
            if changed:
                self._bump(s, [app.device_uuid])
                self._validate(s, app.device_uuid, {(ObjectKind.APP, app.uuid)}, f"app {app.name!r}")
            return self._app_rec(s, app)

    def set_app_volume_refs(self, ref: str, volumes: Sequence[str | tuple[str, int]],
                            device: str | None = None) -> r.App:
        """Replace the app's ordered volume list."""
        with self._write() as s:
            app = self._owned(s, db.App, "app", ref, device)
            before = self._app_rec(s, app).volume_refs
            self._set_refs(s, app, volumes)
            s.flush()
            after = self._app_rec(s, app)
            if after.volume_refs != before:
                self._bump(s, [app.device_uuid])
                self._validate(s, app.device_uuid, {(ObjectKind.APP, app.uuid)}, f"app {app.name!r}")
            return after

    def purge_app(self, ref: str, device: str | None = None) -> r.App:
        """Bump the app's purge counter (the device recreates the app's state)."""
        with self._write() as s:
            app = self._owned(s, db.App, "app", ref, device)
            app.purge_counter += 1
            self._bump(s, [app.device_uuid])
            s.flush()
            return self._app_rec(s, app)

    def delete_app(self, ref: str, device: str | None = None) -> None:
        with self._write() as s:
            app = self._owned(s, db.App, "app", ref, device)
            s.delete(app)
            self._bump(s, [app.device_uuid])

    # ================================================================ reports

    def record_info(self, device: str, info: Any) -> int:
        """Store a ``ZInfoMsg``'s volume / content tree / blob / app reports; returns how many objects changed.

        The newest report (by the device's timestamp) wins: a retried older
        message does not overwrite a newer state. A report with only the
        identity set means the object is gone, and its row is removed.
        Each new state is appended to the object's history (see :meth:`prune`).
        """
        return self._record_one(infomsg.info_report(self.get_device(device).uuid, info))

    def record_metrics(self, device: str, msg: Any) -> int:
        """Store a ``ZMetricMsg``'s volume samples; returns samples stored (retention: :meth:`prune`)."""
        return self._record_one(infomsg.metrics_report(self.get_device(device).uuid, msg))

    def _record_one(self, report: infomsg.Report) -> int:
        result = self.record_reports([report])[0]
        if isinstance(result, StoreError):
            raise result
        return result

    def record_reports(self, reports: Sequence[infomsg.Report]) -> list[int | StoreError]:
        """Store many decoded info and metrics messages in ONE transaction (one commit, one fsync).

        This is the ingestion writer's group commit. Per report: the number of
        objects changed or samples stored, or a :class:`NotFound` for a device
        deleted meanwhile (its report is dropped, the others are kept). Any
        other failure stores nothing and raises, so the caller can retry the
        reports one by one.
        """
        for attempt in range(3):  # two first reports of the same object racing: the loser retries
            try:
                return self._record_reports(reports)
            except Conflict:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _record_reports(self, reports: Sequence[infomsg.Report]) -> list[int | StoreError]:
        now = self.now()
        out: list[int | StoreError] = []
        with self._write() as s:
            wanted = sorted({rep.device_uuid for rep in reports})
            known = set(s.scalars(select(db.Device.uuid).where(db.Device.uuid.in_(wanted)))) if wanted else set()
            samples: list[dict[str, Any]] = []
            for rep in reports:
                if rep.device_uuid not in known:
                    out.append(NotFound(f"device {rep.device_uuid!r} not found"))
                elif rep.samples:
                    at = rep.at or now
                    samples += [dict(device_uuid=rep.device_uuid, volume_uuid=vol, at=at, **values)
                                for vol, values in rep.samples]
                    out.append(len(rep.samples))
                else:
                    out.append(self._store_objects(s, rep, now))
            if samples:  # Core executemany: the ORM's bulk path costs more than the rows
                s.connection().execute(insert(db.VolumeMetric.__table__), samples)
        return out

    def _store_objects(self, s: Session, rep: infomsg.Report, now: datetime) -> int:
        """One info message's objects, in Core statements built once (the ORM cost more than the SQL here)."""
        conn = s.connection()
        changed = 0
        for item in rep.objects:
            ident = {"device_uuid": rep.device_uuid, "kind": item.kind, "object_key": item.key,
                     "generation": item.generation}
            row = conn.execute(_REPORTED_ROW, ident).first()
            if row is not None and rep.at and row.reported_at and rep.at < row.reported_at:
                continue  # older than what we have
            if item.values is None:
                if row is not None:
                    conn.execute(_REPORTED_DELETE, {"rid": row.id})
                    changed += 1
                continue
            values = {**item.values, "payload": item.payload, "updated_at": now, "reported_at": rep.at}
            if row is None:
                conn.execute(_REPORTED_INSERT, {**ident, **values})
            else:
                conn.execute(_REPORTED_UPDATE, {"rid": row.id, **values})
            changed += 1
            if row is None or row.state != item.values["state"]:
                conn.execute(_STATE_INSERT, {**ident, "state": item.values["state"], "at": rep.at or now})
        return changed

    def reported(self, device: str, kind: str | None = None) -> list[r.Reported]:
        """The latest report of every object the device told us about (optionally one kind)."""
        with self._read() as s:
            dev = self._device(s, device)
            q = select(db.ReportedObject).where(db.ReportedObject.device_uuid == dev.uuid)
            if kind is not None:
                if kind not in db.KINDS:
                    raise Invalid(f"kind {kind!r} is not one of {', '.join(db.KINDS)}")
                q = q.where(db.ReportedObject.kind == kind)
            q = q.order_by(db.ReportedObject.kind, db.ReportedObject.object_key, db.ReportedObject.generation)
            return [cv.reported_rec(o) for o in s.scalars(q)]

    def fleet(self) -> list[r.FleetDevice]:
        """Every device with counts of its reported objects by kind and state, in three queries whatever the
        fleet's size (the console polls it)."""
        obj = db.ReportedObject
        with self._read() as s:
            devices = [cv.device_rec(d) for d in s.scalars(select(db.Device).order_by(db.Device.name))]
            counts: dict[str, dict[str, dict[str, int]]] = {}
            for dev, kind, state, n in s.execute(select(obj.device_uuid, obj.kind, obj.state, func.count())
                                                 .group_by(obj.device_uuid, obj.kind, obj.state)):
                name = m.ZSwState.Name(state) if state in m.ZSwState.values() else str(state)
                counts.setdefault(dev, {}).setdefault(kind, {})[name] = n
            # a JSON column holds "no error" as SQL NULL or JSON null, depending on how the row was written
            has_error = obj.error.is_not(None) & (cast(obj.error, Text) != "null")
            errors = {dev: n for dev, n in s.execute(select(obj.device_uuid, func.count()).where(has_error)
                                                     .group_by(obj.device_uuid))}
        return [r.FleetDevice(device=d, counts=counts.get(d.uuid, {}), errors=errors.get(d.uuid, 0))
                for d in devices]

    def history(self, device: str, kind: str, key: str, generation: int | None = None) -> list[r.StateChange]:
        """The states one object went through, oldest first (all generations unless one is given).

        At most ``history_limit`` per generation, whether or not :meth:`prune` has run yet.
        """
        with self._read() as s:
            dev = self._device(s, device)
            q = select(db.StateChange).where(db.StateChange.device_uuid == dev.uuid, db.StateChange.kind == kind,
                                             db.StateChange.object_key == key.lower())
            if generation is not None:
                q = q.where(db.StateChange.generation == generation)
            q = q.order_by(db.StateChange.at.desc(), db.StateChange.id.desc())
            kept: dict[int, int] = {}
            out = []
            for c in s.scalars(q):
                kept[c.generation] = kept.get(c.generation, 0) + 1
                if kept[c.generation] <= self.history_limit:
                    out.append(r.StateChange(kind=c.kind, object_key=c.object_key, generation=c.generation,
                                             state=c.state, at=c.at))
            return out[::-1]

    # ================================================================ metrics

    def volume_metrics(self, device: str, volume_uuid: str, limit: int = 100) -> list[r.VolumeMetric]:
        """The newest ``limit`` samples of one volume within retention, oldest first (ready to plot).

        Retention (the time window and the per-volume cap) applies here whether or not :meth:`prune` has run.
        """
        with self._read() as s:
            dev = self._device(s, device)
            rows = s.scalars(select(db.VolumeMetric)
                             .where(db.VolumeMetric.device_uuid == dev.uuid,
                                    db.VolumeMetric.volume_uuid == volume_uuid.lower(),
                                    db.VolumeMetric.at >= self.now() - self.metrics_retention)
                             .order_by(db.VolumeMetric.at.desc(), db.VolumeMetric.id.desc())
                             .limit(min(limit, self.metrics_per_volume))).all()
            return [r.VolumeMetric(volume_uuid=x.volume_uuid, at=x.at, total_bytes=x.total_bytes,
                                   used_bytes=x.used_bytes, free_bytes=x.free_bytes, read_bytes=x.read_bytes,
                                   write_bytes=x.write_bytes, display_name=x.display_name,
                                   read_count=x.read_count, write_count=x.write_count) for x in reversed(rows)]

    # ================================================================ retention

    def prune(self, batch: int = 5000) -> dict[str, int]:
        """Delete what retention no longer keeps; returns rows deleted per table.

        Metrics older than ``metrics_retention`` or beyond ``metrics_per_volume``
        per volume, and state history beyond ``history_limit`` per object.
        Runs in short transactions of at most ``batch`` rows, from a
        background thread, never on a device request. Reads apply the same
        limits, so when this runs changes only disk use. With several
        controller processes on PostgreSQL one prunes at a time.
        """
        removed = {"volume_metrics": 0, "state_changes": 0}
        with self._exclusive("prune") as mine:
            if not mine:
                return removed
            vm, sc = db.VolumeMetric, db.StateChange
            removed["volume_metrics"] += self._delete_ids(
                vm, select(vm.id).where(vm.at < self.now() - self.metrics_retention), batch)
            removed["volume_metrics"] += self._trim(vm, (vm.device_uuid, vm.volume_uuid), self.metrics_per_volume,
                                                    batch)
            removed["state_changes"] += self._trim(sc, (sc.device_uuid, sc.kind, sc.object_key, sc.generation),
                                                   self.history_limit, batch)
        return removed

    def _delete_ids(self, model: Any, ids: Any, batch: int) -> int:
        total = 0
        while True:
            with self._read() as s:
                chunk = list(s.scalars(ids.limit(batch)))
            if not chunk:
                return total
            with self._write() as s:
                s.execute(delete(model).where(model.id.in_(chunk)).execution_options(synchronize_session=False))
            total += len(chunk)

    def _trim(self, model: Any, group: tuple[Any, ...], keep: int, batch: int) -> int:
        """Keep the newest ``keep`` rows (by ``at``, then ``id``) of every ``group``."""
        with self._read() as s:
            over = s.execute(select(*group).group_by(*group).having(func.count() > keep)).all()
        total = 0
        for values in over:
            same = [col == v for col, v in zip(group, values)]
            newest = select(model.id).where(*same).order_by(model.at.desc(), model.id.desc()).limit(keep)
            total += self._delete_ids(model, select(model.id).where(*same, model.id.not_in(newest)), batch)
        return total

    @contextmanager
    def _exclusive(self, name: str) -> Iterator[bool]:
        """True if this process may do ``name`` now: a PostgreSQL advisory lock held meanwhile (SQLite: always)."""
        if self.engine.dialect.name != "postgresql":
            yield True
            return
        key = int.from_bytes(hashlib.sha256(f"edgevol:{name}".encode()).digest()[:4], "big")
        with self.engine.connect() as conn:
            got = bool(conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({key})").scalar())
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    conn.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
                    conn.commit()

    def count(self, table: str) -> int:
        """Rows in one of the controller's tables (for tests and the status page)."""
        model = {mapper.class_.__tablename__: mapper.class_ for mapper in db.Base.registry.mappers}.get(table)
        if model is None:
            raise Invalid(f"no table {table!r}")
        with self._read() as s:
            return int(s.scalar(select(func.count()).select_from(model)) or 0)
