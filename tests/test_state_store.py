"""The device's state database opened by several processes at once, as the agent and `device status` do."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

from edgevol.device.state import StateStore


def _open(path: str) -> str:
    try:
        StateStore(Path(path)).close()
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        return repr(exc)
    return ""


def _open_together(path: Path, n: int = 4) -> list[str]:
    with multiprocessing.get_context("fork").Pool(n) as pool:
        return [e for e in pool.map(_open, [str(path)] * n) if e]


def test_a_new_database_opened_by_several_processes_at_once(tmp_path: Path) -> None:
    """The agent creating its database while `device status` opens it must not fail ("database is locked")."""
    failures = [e for i in range(15) for e in _open_together(tmp_path / f"fresh{i}" / "state.db")]
    assert failures == []


def test_an_old_database_is_upgraded_once_when_opened_together(tmp_path: Path) -> None:
    """Two openers of a database from an older edgevol both see the new columns; neither adds one twice."""
    for i in range(10):
        path = tmp_path / f"old{i}" / "state.db"
        StateStore(path).close()
        db = sqlite3.connect(path)
        db.execute("ALTER TABLE volumes DROP COLUMN stopped_state")
        db.execute("ALTER TABLE blobs DROP COLUMN unreferenced_since")
        db.commit()
        db.close()
        assert _open_together(path) == []
        db = sqlite3.connect(path)
        columns = {r[1] for r in db.execute("PRAGMA table_info(volumes)")} | \
            {r[1] for r in db.execute("PRAGMA table_info(blobs)")}
        db.close()
        assert {"stopped_state", "unreferenced_since"} <= columns
