"""The device's persistent state: one SQLite database in WAL mode.

Every status the device reports (volumes, content trees, blobs), the queue of
info messages not yet accepted by the controller, and small facts such as the
device id live here, so a restart after ``kill -9`` picks up where it stopped.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

SCHEMA_VERSION = 1
T = TypeVar("T")

# Disk held back for the database itself, so that on a full data disk it can still record that the disk is
# full (the ERROR rows, their reports). Released on the first SQLITE_FULL, taken again once there is room.
RESERVE_BYTES = 2 << 20

def sqlite_full(exc: BaseException) -> bool:
    """True for SQLite's "database or disk is full" (SQLITE_FULL)."""
    return isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY,
    state INTEGER NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL DEFAULT 0,
    done_bytes INTEGER NOT NULL DEFAULT 0,
    ref_count INTEGER NOT NULL DEFAULT 0,
    create_time REAL NOT NULL,
    ref_change_time REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_retry REAL NOT NULL DEFAULT 0,
    error TEXT,
    media_type TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS content_trees (
    uuid TEXT PRIMARY KEY,
    generation INTEGER NOT NULL DEFAULT 0,
    display_name TEXT NOT NULL DEFAULT '',
    sha256 TEXT NOT NULL DEFAULT '',
    state INTEGER NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0,
    cur_size INTEGER NOT NULL DEFAULT 0,
    component_shas TEXT NOT NULL DEFAULT '[]',
    ref_count INTEGER NOT NULL DEFAULT 0,
    create_time REAL NOT NULL,
    ref_change_time REAL NOT NULL,
    spec TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_retry REAL NOT NULL DEFAULT 0,
    resolved TEXT,
    layout TEXT
);
CREATE TABLE IF NOT EXISTS volumes (
    uuid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    state INTEGER NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0,
    max_size INTEGER NOT NULL DEFAULT 0,
    cur_size INTEGER NOT NULL DEFAULT 0,
    path TEXT,
    readonly INTEGER NOT NULL DEFAULT 0,
    ref_count INTEGER NOT NULL DEFAULT 0,
    create_time REAL NOT NULL,
    ref_change_time REAL NOT NULL,
    next_retry REAL NOT NULL DEFAULT 0,
    spec TEXT,
    error TEXT,
    PRIMARY KEY (uuid, generation)
);
CREATE TABLE IF NOT EXISTS apps (
    uuid TEXT PRIMARY KEY,
    display_name TEXT NOT NULL DEFAULT '',
    purge_counter INTEGER NOT NULL DEFAULT 0,
    refs TEXT NOT NULL DEFAULT '[]',
    create_time REAL NOT NULL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    payload BLOB NOT NULL,
    queued_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_seq ON outbox(seq);
CREATE TABLE IF NOT EXISTS reported (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_KEYS = {"blobs": ("sha256",), "content_trees": ("uuid",), "volumes": ("uuid", "generation"), "apps": ("uuid",)}
_JSON_COLUMNS = {"error", "warning", "export_error", "spec", "component_shas", "resolved", "layout", "refs", "signature_check"}

# Columns added after a table first shipped: (table, column, declaration).
_ADDED_COLUMNS = [
    ("blobs", "media_type", "TEXT NOT NULL DEFAULT ''"),
    ("content_trees", "attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("content_trees", "next_retry", "REAL NOT NULL DEFAULT 0"),
    ("content_trees", "resolved", "TEXT"),
    ("content_trees", "layout", "TEXT"),
    ("content_trees", "unreferenced_since", "REAL"),
    ("blobs", "unreferenced_since", "REAL"),
    ("blobs", "stopped_state", "INTEGER NOT NULL DEFAULT 1"),
    ("content_trees", "stopped_state", "INTEGER NOT NULL DEFAULT 1"),
    ("volumes", "stopped_state", "INTEGER NOT NULL DEFAULT 1"),
    ("volumes", "warning", "TEXT"),  # an ErrorRecord of severity warning, beside the error (reconcile/sharing.py)
    ("volumes", "unreferenced_since", "REAL"),
    ("content_trees", "signature_check", "TEXT"),
    # sha256 of the CAS blob a clone volume reads through to (edgevol.volume.clone=backing): pins the blob.
    ("volumes", "backing_blob", "TEXT"),
    # An ErrorRecord about serving the volume to its apps' tasks (reconcile/exports.py): a crashed export
    # daemon waiting for its restart, or an access protocol the device cannot offer for the volume.
    ("volumes", "export_error", "TEXT"),
]

# ZSwState numbers the store itself must know (it does not import the API's messages).
_INITIAL, _ERROR = 1, 21
# Tables whose rows are reported objects with a state and a progress figure.
_REPORTED = {"blobs", "content_trees", "volumes"}


@dataclass(frozen=True)
class ErrorRecord:
    """What went wrong with one object, in the shape of the API's ``ErrorInfo``."""

    description: str
    time: float
    severity: str = "error"  # "error" | "warning" | "notice"
    retry_condition: str = ""
    entity: str = ""  # ObjectKind value
    entity_id: str = ""
    entity_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ErrorRecord | None:
        return cls(**data) if data else None


def _keep_progress(current: sqlite3.Row, enc: dict[str, Any]) -> dict[str, Any]:
    """Hold on to where an object's progress stopped, whatever a caller writes.

    EVE's volumes, content trees and blobs never report ERROR: an object with a
    problem keeps the state it had reached and carries the error beside it. The
    device keeps ERROR as its own state (``--once``, retries and ``device
    status`` rely on it) and records in ``stopped_state`` the state it left,
    which is what goes on the wire. And a controller reads progressPercentage
    as only ever rising, so a retry, a resumed download that lost its partial,
    or a volume create that follows a download never sets it lower: only an
    object that starts over from INITIAL (new content, a vanished file) does.
    """
    out = dict(enc)
    state = out.get("state", current["state"])
    if state == _ERROR and current["state"] != _ERROR:
        out.setdefault("stopped_state", current["state"])
    if "progress" in out and state != _INITIAL and out["progress"] < current["progress"]:
        out["progress"] = current["progress"]
    return out


class StateStore:
    """Thread-safe access to the state database.

    One connection shared under a lock: writes are small and few (state
    changes and throttled progress), so contention is not a concern, and a
    single writer avoids ``database is locked`` surprises.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._wal()
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._migrate()
        self._db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                         (str(SCHEMA_VERSION),))
        self.version = 0  # bumped on every write; lets readers skip work when nothing changed
        self.reserve_path = path.with_name(path.name + ".reserve")
        self.reserve_released = False  # the database took its reserve back on a full disk

    def _wal(self, patience: float = 30.0) -> None:
        """Switch to WAL, waiting out another process doing the same on a database just created.

        SQLite does not call the busy handler for a journal mode change, so a
        ``device status`` started while the agent creates the database would
        fail with "database is locked" at once; it waits instead.
        """
        deadline = time.monotonic() + patience
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _migrate(self) -> None:
        """Bring a state database written by an older edgevol up to this schema, in place.

        In one write transaction: the agent and a ``device status`` opening the
        same database at once would otherwise both see a column missing and
        both add it (the second failing with "duplicate column name"), and a
        crash half-way would leave only some of the columns.
        """
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for table, column, decl in _ADDED_COLUMNS:
                have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- room for the database on a full disk --------------------------------
    def keep_reserve(self) -> None:
        """Hold :data:`RESERVE_BYTES` for the database, taking it again once the disk has room for it.

        Its content means nothing, so it is allocated in place rather than via temp + rename; a torn one
        has the wrong size and is simply allocated again.
        """
        try:
            if self.reserve_path.stat().st_size == RESERVE_BYTES:
                self.reserve_released = False
                return
        except FileNotFoundError:
            pass
        try:
            st = os.statvfs(self.reserve_path.parent)
            if st.f_bavail * st.f_frsize < 4 * RESERVE_BYTES:
                return  # a nearly full disk: do not take its last bytes from work in progress
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
            self.reserve_released = False
        except OSError:
            self.reserve_path.unlink(missing_ok=True)

    def leaves_room(self, n: int) -> bool:
        """Whether ``n`` more bytes of bulk data (a download) leave the room the database took back."""
        if not self.reserve_released:
            return True
        st = os.statvfs(self.reserve_path.parent)
        return st.f_bavail * st.f_frsize >= RESERVE_BYTES + n

    def _retry_when_full(self, write: Callable[[], T]) -> T:
        """Run one write; on SQLITE_FULL, release the reserve and run it once more.

        Inside a :meth:`batch` the failure goes up to the batch, which rolls back and retries as a whole.
        """
        try:
            return write()
        except sqlite3.OperationalError as exc:
            if not sqlite_full(exc) or self._db.in_transaction or not self.release_reserve():
                raise
            self.reserve_released = True
            return write()

    def release_reserve(self) -> bool:
        """Give the reserve back to the filesystem; True if there was one."""
        try:
            self.reserve_path.unlink()
        except FileNotFoundError:
            return False
        return True

    def _write(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        self._retry_when_full(lambda: self._db.execute(sql, args))

    # -- transactions ---------------------------------------------------------
    def batch(self, work: Callable[[], T]) -> T:
        """Run ``work``'s writes as one transaction: one commit, so one fsync, instead of one per row.

        The store is held for the duration (other threads' reads and writes
        wait), so callers keep a batch to a bounded number of rows. Within a
        batch, writes join it. On SQLITE_FULL the whole batch is rolled back
        and run once more after the reserve is released, so ``work`` must
        only write the database (no files, no tasks): it may run twice.
        """
        with self._lock:
            if self._db.in_transaction:
                return work()
            return self._retry_when_full(lambda: self._transaction(work))

    def _transaction(self, work: Callable[[], T]) -> T:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = work()
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLite already rolled back after e.g. SQLITE_FULL
                self._db.execute("ROLLBACK")
            raise
        return result

    def _atomic(self, work: Callable[[], T]) -> T:
        """All of ``work`` or none of it: its own transaction, or a savepoint within a caller's batch."""
        if not self._db.in_transaction:
            return self._transaction(work)
        self._db.execute("SAVEPOINT atomic")
        try:
            result = work()
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK TO atomic")
                self._db.execute("RELEASE atomic")
            raise
        self._db.execute("RELEASE atomic")
        return result

    # -- generic rows -------------------------------------------------------
    @staticmethod
    def _decode(row: sqlite3.Row) -> dict[str, Any]:
        out = dict(row)
        for col in _JSON_COLUMNS & out.keys():
            out[col] = json.loads(out[col]) if out[col] else None
        return out

    @staticmethod
    def _encode(fields: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in fields.items():
            if k in _JSON_COLUMNS:
                v = json.dumps(v.to_dict() if isinstance(v, ErrorRecord) else v, sort_keys=True) \
                    if v is not None else None
            elif isinstance(v, bool):
                v = int(v)
            out[k] = v
        return out

    def _where(self, table: str, key: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
        cols = _KEYS[table]
        if len(cols) != len(key):
            raise ValueError(f"{table} is keyed by {cols}")
        return " AND ".join(f"{c}=?" for c in cols), key

    def get(self, table: str, *key: Any) -> dict[str, Any] | None:
        where, args = self._where(table, key)
        with self._lock:
            row = self._db.execute(f"SELECT * FROM {table} WHERE {where}", args).fetchone()
        return self._decode(row) if row else None

    def all(self, table: str) -> list[dict[str, Any]]:
        order = ", ".join(_KEYS[table])
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
        return [self._decode(r) for r in rows]

    def rows(self, table: str, *columns: str) -> list[dict[str, Any]]:
        """:meth:`all` for only ``columns``: what a pass over thousands of rows reads, without decoding the
        JSON columns it does not need."""
        if not columns or any(not c.isidentifier() for c in columns):
            raise ValueError(f"bad column list {columns!r}")
        order = ", ".join(_KEYS[table])
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}").fetchall()
        return [self._decode(r) for r in rows]

    def generations(self, uuid: str) -> list[tuple[int, str | None]]:
        """(generation, path) of every row of volume ``uuid``: an indexed lookup, not a scan."""
        with self._lock:
            return [(r[0], r[1]) for r in self._db.execute(
                "SELECT generation, path FROM volumes WHERE uuid=? ORDER BY generation", (uuid,))]

    def insert(self, table: str, **fields: Any) -> None:
        if table in _REPORTED and fields.get("state") == _ERROR:
            fields.setdefault("stopped_state", _INITIAL)  # born in error: progress never started
        enc = self._encode(fields)
        cols = ", ".join(enc)
        marks = ", ".join("?" for _ in enc)
        with self._lock:
            self._write(f"INSERT INTO {table} ({cols}) VALUES ({marks})", tuple(enc.values()))
            self.version += 1

    def update_progress(self, table: str, key: tuple[Any, ...], **fields: Any) -> None:
        """:meth:`update` for progress figures only: on a full disk the figure is dropped, not the work.

        Progress is advisory and written again moments later. A download or a
        ``qemu-img convert`` that fills the disk must end with its own ENOSPC,
        recorded as the object's ERROR, not die on a progress write that lost
        the race for the room the database just freed.
        """
        try:
            self.update(table, key, **fields)
        except sqlite3.OperationalError as exc:
            if not sqlite_full(exc):
                raise

    def update(self, table: str, key: tuple[Any, ...], **fields: Any) -> bool:
        """Set ``fields`` on one row; returns False when nothing actually changed."""
        where, args = self._where(table, key)
        enc = self._encode(fields)
        with self._lock:
            current = self._db.execute(f"SELECT * FROM {table} WHERE {where}", args).fetchone()
            if current is None:
                raise KeyError(f"{table} {key} does not exist")
            if table in _REPORTED:
                enc = _keep_progress(current, enc)
            changed = {k: v for k, v in enc.items() if current[k] != v}
            if not changed:
                return False
            sets = ", ".join(f"{k}=?" for k in changed)
            self._write(f"UPDATE {table} SET {sets} WHERE {where}", tuple(changed.values()) + args)
            self.version += 1
        return True

    def delete(self, table: str, *key: Any) -> None:
        where, args = self._where(table, key)
        with self._lock:
            self._write(f"DELETE FROM {table} WHERE {where}", args)
            self.version += 1

    def move_volume(self, old: tuple[str, int], new: tuple[str, int], **fields: Any) -> None:
        """Give volume row ``old`` the identity ``new``, and point the apps using it there, in one transaction.

        A row already at ``new`` (one that never got a volume) gives way. Used when
        a controller's volume takes over an implicit one: a crash leaves either the
        old identity everywhere or the new one everywhere.
        """
        enc = self._encode(fields)

        def work() -> None:
            self._db.execute("DELETE FROM volumes WHERE uuid=? AND generation=?", new)
            sets = "".join(f", {k}=?" for k in enc)
            self._db.execute(f"UPDATE volumes SET uuid=?, generation=?{sets} WHERE uuid=? AND generation=?",
                             (*new, *enc.values(), *old))
            for app_uuid, raw in self._db.execute("SELECT uuid, refs FROM apps").fetchall():
                refs = json.loads(raw or "[]")
                moved = [list(new) if [u, g] == list(old) else [u, g] for u, g in refs]
                if moved != refs:
                    self._db.execute("UPDATE apps SET refs=? WHERE uuid=?",
                                     (json.dumps(moved, sort_keys=True), app_uuid))

        with self._lock:
            self._retry_when_full(lambda: self._atomic(work))
            self.version += 1

    # -- outbox -------------------------------------------------------------
    def outbox_put(self, key: str, payload: bytes, gone_from: str | None = None) -> None:
        """Queue ``payload``; a newer message for the same object replaces an unsent one.

        ``gone_from`` marks ``payload`` as a deletion within a family of keys
        (``volume/<uuid>#``: every generation of one volume). In the same
        transaction the family's unsent messages move after it and the
        family's fingerprints are forgotten, so the reporter queues the
        surviving generations' reports again: whatever order the messages go
        in, the last one for the uuid describes what is still there, even
        across a crash.
        """
        with self._lock:
            self._retry_when_full(lambda: self._atomic(lambda: self._outbox_put(key, payload, gone_from)))

    def _outbox_put(self, key: str, payload: bytes, gone_from: str | None = None) -> None:
        seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM outbox").fetchone()[0]
        self._db.execute(
            "INSERT INTO outbox(key, seq, payload, queued_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET seq=excluded.seq, payload=excluded.payload, "
            "queued_at=excluded.queued_at",
            (key, seq, payload, time.time()),
        )
        if gone_from is not None:
            family, bounds = "key >= ? AND key < ?", (gone_from, gone_from + "\U0010ffff")  # a key range: indexed
            later = self._db.execute(f"SELECT key FROM outbox WHERE {family} AND key != ? ORDER BY seq",
                                     (*bounds, key)).fetchall()
            for n, (other,) in enumerate(later, start=1):
                self._db.execute("UPDATE outbox SET seq=? WHERE key=?", (seq + n, other))
            self._db.execute(f"DELETE FROM reported WHERE {family}", bounds)

    def outbox_items(self) -> Iterator[tuple[str, int, bytes]]:
        with self._lock:
            rows = self._db.execute("SELECT key, seq, payload FROM outbox ORDER BY seq").fetchall()
        yield from ((r["key"], r["seq"], bytes(r["payload"])) for r in rows)

    def outbox_ack(self, key: str, seq: int) -> None:
        """Drop a delivered message unless a newer one replaced it meanwhile."""
        with self._lock:
            self._write("DELETE FROM outbox WHERE key=? AND seq=?", (key, seq))

    # -- reported fingerprints ----------------------------------------------
    def fingerprint(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT fingerprint FROM reported WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def fingerprints(self) -> dict[str, str]:
        """Every fingerprint, read at once by a reporter about to compare thousands of objects."""
        with self._lock:
            return dict(self._db.execute("SELECT key, fingerprint FROM reported").fetchall())

    def set_fingerprint(self, key: str, fingerprint: str | None) -> None:
        with self._lock:
            if fingerprint is None:
                self._write("DELETE FROM reported WHERE key=?", (key,))
            else:
                self._write("INSERT OR REPLACE INTO reported(key, fingerprint) VALUES (?, ?)",
                                 (key, fingerprint))

    # -- meta ---------------------------------------------------------------
    def meta_get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def meta_set(self, key: str, value: str) -> None:
        with self._lock:
            self._write("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
