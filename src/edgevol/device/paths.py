"""Where things live under the device's ``--data-dir``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataDir:
    root: Path

    @property
    def state_db(self) -> Path:
        return self.root / "state.db"

    @property
    def cas(self) -> Path:
        return self.root / "cas"

    @property
    def volumes(self) -> Path:
        return self.root / "volumes"

    @property
    def checkpoint(self) -> Path:
        """The last config that decoded cleanly, used when the source is unreadable."""
        return self.root / "checkpoint" / "config.pb"
