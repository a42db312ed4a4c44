"""One-time move of volumes left by drive-based versions into the volume layout.

Why: a device upgraded from a version that only knew ``Drive`` keeps its app
disks in ``<data-dir>/img/<sha256>-<appUUID>.<fmt>``. The applications' data
lives there, so instead of building fresh volumes from the content trees the
agent must find those files under ``volumes/<uuid>#<generation>.<fmt>``, where
its usual adoption picks them up. See docs/MIGRATION.md for the layout, the
mapping rules and what a downgrade finds.

Every step is safe against ``kill -9``: the move in flight is journalled in the
state database before it starts, files are moved by hard link (or an atomic
directory rename) so both names point at the same data until the old name is
dropped, and nothing that cannot be mapped is ever deleted.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import time
import uuid as uuidlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgevol import fsutil
from edgevol.api.codec import (
    MAX_CONFIG_BYTES,
    ConfigDecodeError,
    decode_edge_dev_config,
    load_edge_dev_config,
)
from edgevol.api.messages import EdgeDevConfig
from edgevol.device.paths import DataDir
from edgevol.device.state import StateStore
from edgevol.log import get_logger

log = get_logger("edgevol.migrate")

LEGACY_IMG_DIR = "img"
LEGACY_CHECKPOINT = Path("checkpoint") / "lastconfig"
REPORT_FILE = "migration-report.json"

META_DONE = "legacy_migration"  # "done" once everything mappable has moved
META_REPORT = "legacy_migration_report"  # JSON summary for `device status`
META_JOURNAL = "legacy_migration_journal"  # JSON {"pending": move | null, "moved": [...]}

# A legacy container directory is renamed to this before its (non-atomic) removal
# after a cross-filesystem copy, so a half-removed tree never sits under a name
# an old version would use.
REMOVING_PREFIX = ".migrated-"

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_LEGACY_NAME = re.compile(rf"^([0-9a-fA-F]{{64}})-({_UUID})\.(qcow2|raw|container)$")
_VOLUME_SUFFIXES = ("qcow2", "raw", "container")
_CONTAINER_FORMAT = 8  # org.lfedge.eve.config.Format.CONTAINER
_DISK_FORMATS = {1, 3}  # RAW, QCOW2
# link(2) failures that mean "this pair of places cannot share an inode": copy instead.
_COPY_INSTEAD = (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK)


# -- the report ----------------------------------------------------------------
@dataclass(frozen=True)
class Moved:
    legacy: str
    target: str
    volume_uuid: str
    generation: int


@dataclass(frozen=True)
class Kept:
    """A legacy entry left where it was; ``target`` is set for a conflict with an existing volume."""

    path: str
    reason: str
    target: str | None = None


@dataclass(frozen=True)
class Failure:
    path: str
    error: str


@dataclass
class MigrationReport:
    ran: bool = False  # False when there was nothing to do (no img/, or already done)
    done: bool = False  # True once everything mappable has moved; later starts skip the migration
    moved: list[Moved] = field(default_factory=list)
    kept_unmapped: list[Kept] = field(default_factory=list)
    errors: list[Failure] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ran": self.ran, "done": self.done, "moved": [asdict(x) for x in self.moved],
                "kept_unmapped": [asdict(x) for x in self.kept_unmapped],
                "errors": [asdict(x) for x in self.errors]}


# -- entry points --------------------------------------------------------------
def load_checkpointed_config(path: Path) -> EdgeDevConfig | None:
    """The config a checkpoint holds, or None if it is missing or unreadable."""
    if not path.exists():
        return None
    try:
        return load_edge_dev_config(path)
    except ConfigDecodeError as exc:
        log.warning("checkpointed config unreadable; migrating without it", error=str(exc))
        return None


def migrate_legacy_layout(data_dir: Path, current_config: EdgeDevConfig | None,
                          store: StateStore) -> MigrationReport:
    """Move legacy ``img/`` volumes to where the volume layout expects them.

    ``current_config`` is the config the agent is about to apply; when it is
    None the legacy checkpoint stands in for it (it is the last config the
    controller sent, possibly already naming volumes). Call before the first
    reconcile pass, from a single process.
    """
    data_dir = Path(data_dir)
    img = data_dir / LEGACY_IMG_DIR
    if not img.is_dir() or store.meta_get(META_DONE) == "done":
        return MigrationReport()
    volumes = DataDir(data_dir).volumes
    volumes.mkdir(parents=True, exist_ok=True)
    m = _Migration(data_dir, img, volumes, store)
    m.run(current_config)
    report = m.report
    report.ran = True
    report.done = not report.errors
    _write_report(data_dir, store, report)
    if report.done:
        store.meta_set(META_DONE, "done")
    log.info("legacy layout migration", done=report.done, moved=len(report.moved),
             kept=len(report.kept_unmapped), errors=len(report.errors))
    return report


def _write_report(data_dir: Path, store: StateStore, report: MigrationReport) -> None:
    path = data_dir / REPORT_FILE
    body = dict(report.to_dict(), time=time.time())
    fsutil.atomic_write_bytes(path, (json.dumps(body, indent=2) + "\n").encode(), mode=0o644)
    summary = {"status": "done" if report.done else "incomplete", "time": body["time"], "report": str(path),
               "moved": len(report.moved), "kept_unmapped": [asdict(k) for k in report.kept_unmapped],
               "errors": [asdict(e) for e in report.errors]}
    store.meta_set(META_REPORT, json.dumps(summary, sort_keys=True))


# -- mapping -------------------------------------------------------------------
@dataclass(frozen=True)
class _Target:
    volume_uuid: str
    generation: int


class _Unmapped(Exception):
    """Why a legacy entry has no target; it stays where it is."""


def _canon_uuid(value: str) -> str | None:
    try:
        out = str(uuidlib.UUID(value))
    except (ValueError, TypeError, AttributeError):
        return None
    return out if len(value) == 36 else None


def _canon_sha(value: str) -> str:
    return value.strip().lower().removeprefix("sha256:")


def _find_app(cfg: EdgeDevConfig, app_uuid: str) -> Any | None:
    for app in cfg.apps:
        if _canon_uuid(app.uuidandversion.uuid) == app_uuid:
            return app
    return None


class _Mapper:
    """Turns (sha256, app UUID) of a legacy name into the volume that should hold it."""

    def __init__(self, legacy: EdgeDevConfig | None, current: EdgeDevConfig | None) -> None:
        self.legacy = legacy
        self.current = current if current is not None else legacy

    def image_uuid(self, sha: str, app_uuid: str) -> str:
        if self.legacy is None:
            raise _Unmapped(f"no readable legacy checkpoint ({LEGACY_CHECKPOINT}) to map it with")
        app = _find_app(self.legacy, app_uuid)
        if app is None:
            raise _Unmapped(f"app {app_uuid} is not in the legacy checkpoint")
        for drive in app.drives:
            if _canon_sha(drive.image.sha256) == sha:
                image = _canon_uuid(drive.image.uuidandversion.uuid)
                if image is None:
                    raise _Unmapped(f"the legacy drive's image uuid {drive.image.uuidandversion.uuid!r} is not a UUID")
                return image
        raise _Unmapped(f"app {app_uuid} has no drive with sha256 {sha} in the legacy checkpoint")

    def target(self, app_uuid: str, image_uuid: str, container: bool) -> _Target:
        cfg = self.current
        assert cfg is not None
        app = _find_app(cfg, app_uuid)
        if app is None:
            raise _Unmapped(f"app {app_uuid} is not in the current config")
        self._check_kind(cfg, image_uuid, container)
        if len(app.volumeRefList):
            volumes = {_canon_uuid(v.uuid): v for v in cfg.volumes}
            for ref in app.volumeRefList:
                vol = volumes.get(_canon_uuid(ref.uuid))
                if vol is None or _canon_uuid(vol.origin.downloadContentTreeID) != image_uuid:
                    continue
                vol_uuid = _canon_uuid(vol.uuid)
                if vol_uuid is None or vol.generationCount < 0:
                    raise _Unmapped(f"the current config's volume {vol.uuid!r}#{vol.generationCount} is invalid")
                return _Target(vol_uuid, vol.generationCount)
            raise _Unmapped(f"app {app_uuid} references no volume made from content tree {image_uuid}")
        drive = next((d for d in app.drives if _canon_uuid(d.image.uuidandversion.uuid) == image_uuid), None)
        if drive is None:
            raise _Unmapped(f"app {app_uuid} no longer has a drive with image {image_uuid}")
        from edgevol.model.legacy import implicit_generation, implicit_volume_uuid  # lazy: written alongside

        # exactly the volume the config parser makes of that drive
        return _Target(implicit_volume_uuid(app_uuid, image_uuid),
                       implicit_generation(app.purge.counter, drive.preserve))

    @staticmethod
    def _check_kind(cfg: EdgeDevConfig, image_uuid: str, container: bool) -> None:
        """Refuse to hand a disk image to a container app, or the reverse."""
        formats = [ct.iformat for ct in cfg.contentInfo if _canon_uuid(ct.uuid) == image_uuid]
        formats += [d.image.iformat for a in cfg.apps for d in a.drives
                    if _canon_uuid(d.image.uuidandversion.uuid) == image_uuid]
        known = [f for f in formats if f == _CONTAINER_FORMAT or f in _DISK_FORMATS]
        if known and (known[0] == _CONTAINER_FORMAT) != container:
            want = "a container" if known[0] == _CONTAINER_FORMAT else "a disk image"
            raise _Unmapped(f"the current config declares content tree {image_uuid} as {want}")


def _load_legacy_checkpoint(data_dir: Path) -> EdgeDevConfig | None:
    """The binary EdgeDevConfig the drive-based version last applied, or None."""
    path = data_dir / LEGACY_CHECKPOINT
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigDecodeError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
        return decode_edge_dev_config(data, "binary", source=str(path))
    except FileNotFoundError:
        return None
    except (OSError, ConfigDecodeError) as exc:
        log.warning("legacy checkpoint unreadable", path=str(path), error=str(exc))
        return None


# -- moving --------------------------------------------------------------------
def _exists(path: Path) -> bool:
    return os.path.lexists(path)


def _same_inode(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


class _Migration:
    def __init__(self, data_dir: Path, img: Path, volumes: Path, store: StateStore) -> None:
        self.data_dir = data_dir
        self.img = img
        self.volumes = volumes
        self.store = store
        self.report = MigrationReport()
        journal = json.loads(store.meta_get(META_JOURNAL) or "{}")
        self.moved: list[dict[str, Any]] = journal.get("moved", [])
        self.pending: dict[str, Any] | None = journal.get("pending")

    # -- journal --------------------------------------------------------------
    def _journal(self, pending: dict[str, Any] | None) -> None:
        self.pending = pending
        self.store.meta_set(META_JOURNAL, json.dumps({"pending": pending, "moved": self.moved}, sort_keys=True))

    def _finish(self, move: dict[str, Any]) -> None:
        """Record a completed move and clear the journal in one write."""
        self.moved.append({k: move[k] for k in ("legacy", "target", "volume_uuid", "generation")})
        self._journal(None)

    # -- the run --------------------------------------------------------------
    def run(self, current: EdgeDevConfig | None) -> None:
        if self.pending is not None:
            try:
                self._resume(self.pending)
            except Exception as exc:
                self.report.errors.append(Failure(self.pending["legacy"], f"finishing an interrupted move: {exc}"))
                self._publish_moved()
                return  # the journal still names it; the next start tries again
        mapper = _Mapper(_load_legacy_checkpoint(self.data_dir), current)
        claimed: set[tuple[str, int]] = set()
        for entry in sorted(os.scandir(self.img), key=lambda e: e.name):
            try:
                self._one(Path(entry.path), mapper, claimed)
            except Exception as exc:  # one bad entry must not stop the others, nor the agent's start
                log.error("legacy volume not migrated", path=entry.path, error=repr(exc))
                self.report.errors.append(Failure(entry.path, str(exc) or repr(exc)))
                if self.pending is not None:
                    break  # a half-finished move stays journalled; the next start finishes it first
        self._publish_moved()

    def _publish_moved(self) -> None:
        self.report.moved = [Moved(**m) for m in self.moved]

    def _one(self, legacy: Path, mapper: _Mapper, claimed: set[tuple[str, int]]) -> None:
        match = _LEGACY_NAME.match(legacy.name)
        if match is None:
            self.report.kept_unmapped.append(Kept(str(legacy), "not a legacy volume name"))
            return
        sha, app_raw, suffix = match.group(1).lower(), match.group(2), match.group(3)
        container = suffix == "container"
        if legacy.is_symlink():
            self.report.kept_unmapped.append(Kept(str(legacy), "a symbolic link; only real files are moved"))
            return
        if not (legacy.is_dir() if container else legacy.is_file()):
            want = "a directory" if container else "a regular file"
            self.report.kept_unmapped.append(Kept(str(legacy), f"not {want} as its name says"))
            return
        try:
            app_uuid = _canon_uuid(app_raw)
            assert app_uuid is not None
            image_uuid = mapper.image_uuid(sha, app_uuid)
            target = mapper.target(app_uuid, image_uuid, container)
        except _Unmapped as exc:
            self.report.kept_unmapped.append(Kept(str(legacy), str(exc)))
            return
        dest = self.volumes / f"{target.volume_uuid}#{target.generation}.{suffix}"
        ident = (target.volume_uuid, target.generation)
        if ident in claimed:
            self.report.kept_unmapped.append(
                Kept(str(legacy), "conflict: another legacy entry maps to the same volume", str(dest)))
            return
        claimed.add(ident)
        existing = [p for s in _VOLUME_SUFFIXES
                    if _exists(p := self.volumes / f"{target.volume_uuid}#{target.generation}.{s}")]
        move = {"legacy": str(legacy), "target": str(dest), "volume_uuid": target.volume_uuid,
                "generation": target.generation, "kind": "dir" if container else "file",
                "legacy_name": legacy.name, "target_name": dest.name}
        if existing:
            if existing == [dest] and not container and _same_inode(legacy, dest):
                self._journal(dict(move, method="link"))  # already linked: only the old name is left to go
                self._drop_file(legacy)
                self._finish(move)
                return
            self.report.kept_unmapped.append(
                Kept(str(legacy), "conflict: the volume already exists with other content; both kept",
                     str(existing[0])))
            return
        self._move(move)

    def _move(self, move: dict[str, Any]) -> None:
        legacy, dest = Path(move["legacy"]), Path(move["target"])
        self._journal(dict(move, method="link" if move["kind"] == "file" else "rename"))
        try:
            if move["kind"] == "file":
                os.link(legacy, dest)
            else:
                os.rename(legacy, dest)
        except OSError as exc:
            if exc.errno not in (_COPY_INSTEAD if move["kind"] == "file" else (errno.EXDEV,)):
                self._journal(None)
                raise
            self._journal(dict(move, method="copy"))
            self._copy(legacy, dest, move["kind"])
            self._finish(move)
            return
        fsutil.fsync_dir(self.volumes)
        if move["kind"] == "file":
            self._drop_file(legacy)  # on failure the journal stays: the next start unlinks it
        else:
            fsutil.fsync_dir(self.img)
        self._finish(move)

    def _drop_file(self, legacy: Path) -> None:
        os.unlink(legacy)
        fsutil.fsync_dir(self.img)

    def _drop_dir(self, legacy: Path) -> None:
        """Hide the tree under a name nothing uses, then remove it (removal is not atomic)."""
        hidden = self.img / (REMOVING_PREFIX + legacy.name)
        if _exists(legacy):
            os.rename(legacy, hidden)
            fsutil.fsync_dir(self.img)
        if _exists(hidden):
            fsutil.remove_tree(hidden)
            fsutil.fsync_dir(self.img)

    def _clean_temps_for(self, dest: Path) -> None:
        prefix = f"{fsutil.TEMP_PREFIX}{dest.name}."
        for p in self.volumes.iterdir():
            if p.name.startswith(prefix):
                if p.is_dir() and not p.is_symlink():
                    fsutil.remove_tree(p)
                else:
                    p.unlink(missing_ok=True)

    def _copy(self, legacy: Path, dest: Path, kind: str) -> None:
        """Across filesystems: copy under a temp name, make it durable, publish, then drop the source."""
        self._clean_temps_for(dest)
        tmp = fsutil.temp_path_for(dest)
        tmp.unlink()
        published = False
        try:
            proc = subprocess.run(["cp", "-a", "--sparse=auto", "--", str(legacy), str(tmp)],
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise OSError(errno.EIO, f"copying {legacy} to {dest.parent} failed: {proc.stderr.strip()}")
            if kind == "file":
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.link(tmp, dest)  # never replaces an existing volume
            else:
                os.sync()  # a whole tree: one sync beats an fsync per file
                if _exists(dest):
                    raise OSError(errno.EEXIST, f"{dest} appeared while copying")
                os.rename(tmp, dest)
            published = True
        finally:
            if not published:  # the source is untouched: forget the attempt, retry on the next start
                self._clean_temps_for(dest)
                self._journal(None)
        self._clean_temps_for(dest)
        fsutil.fsync_dir(self.volumes)
        # From here on the journal stays until the source is gone, so a failure is finished later.
        if kind == "file":
            self._drop_file(legacy)
        else:
            self._drop_dir(legacy)

    # -- after an interruption ------------------------------------------------
    def _resume(self, pending: dict[str, Any]) -> None:
        """Finish or forget the move the journal says was in flight, by what is on disk."""
        # Names, not the recorded absolute paths: the data dir may be mounted elsewhere now.
        legacy, dest = self.img / pending["legacy_name"], self.volumes / pending["target_name"]
        method = pending["method"]
        if method == "copy":
            self._clean_temps_for(dest)
            if not _exists(dest):  # the copy never got published: start over from the source
                self._journal(None)
                return
            if pending["kind"] == "file":
                if _exists(legacy):
                    self._drop_file(legacy)
            else:
                self._drop_dir(legacy)
            self._finish(pending)
            return
        if not _exists(dest):
            self._journal(None)  # the link or rename never happened
            return
        if not _exists(legacy):
            fsutil.fsync_dir(self.volumes)
            fsutil.fsync_dir(self.img)
            self._finish(pending)
            return
        if method == "link" and _same_inode(legacy, dest):
            fsutil.fsync_dir(self.volumes)
            self._drop_file(legacy)
            self._finish(pending)
            return
        self._journal(None)  # both exist and differ: the scan reports it as a conflict
