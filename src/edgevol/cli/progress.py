"""Progress bars for ``device run`` on a terminal: one bar per object still in flight."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from edgevol.api import messages as m
from edgevol.device.state import StateStore

S = m.ZSwState
_DONE = {S.LOADED, S.CREATED_VOLUME, S.ERROR}


class ProgressView:
    def __init__(self, store: StateStore, console: Console) -> None:
        self.store = store
        self.progress = Progress(TextColumn("{task.description:<40}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                 TextColumn("{task.fields[state]}"), console=console, transient=False)
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> ProgressView:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.refresh()
        self.progress.stop()

    def refresh(self) -> None:
        rows = [(f"volume {r['display_name'] or r['uuid'][:8]}#{r['generation']}", r)
                for r in self.store.all("volumes")]
        rows += [(f"content {r['display_name'] or r['uuid'][:8]}", r) for r in self.store.all("content_trees")]
        for label, row in rows:
            state = S.Name(row["state"])
            if label not in self._tasks:
                if row["state"] in _DONE:
                    continue  # nothing to watch; the final table shows it
                self._tasks[label] = self.progress.add_task(label, total=100, state=state)
            pct = 100 if row["state"] in (S.LOADED, S.CREATED_VOLUME) else row["progress"]
            self.progress.update(self._tasks[label], completed=pct, state=state)
