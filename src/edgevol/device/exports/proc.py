"""One supervised daemon process: started to die with the agent, its stderr read by a thread.

The thread keeps the stderr tail for error reports, appends it to a log file
under the exports dir, and hands trace lines to a counter (qemu-storage-daemon
reports its I/O through trace events, see :mod:`.qsd`). Reading continuously
also means the daemon never blocks on a full stderr pipe.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
from collections import deque
from pathlib import Path
from typing import Callable

LOG_MAX_BYTES = 1 << 20
TAIL_LINES = 20
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the agent dies, even of SIGKILL; no exports outlive it.

    The kernel sends it when the *thread* that forked exits, so daemons must be
    started from a long-lived thread (the agent's reconcile loop).
    """
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Daemon:
    """A running (or exited) daemon; ``line_hook`` returns True for lines it consumed (not logged)."""

    def __init__(self, name: str, argv: list[str], cwd: Path, log_path: Path,
                 line_hook: Callable[[str], bool] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._hook = line_hook
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        if log_path.exists() and log_path.stat().st_size > LOG_MAX_BYTES:
            log_path.unlink()
        self._log = open(log_path, "a", encoding="utf-8", errors="replace")
        os.chmod(log_path, 0o600)
        self.proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=_die_with_parent,
                                     start_new_session=True)  # a terminal's ^C goes to the agent only
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, name=f"export-stderr-{self.pid}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        try:
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if self._hook is not None and self._hook(line):
                    continue
                self.tail.append(line)
                self._log.write(line + "\n")
                self._log.flush()
        finally:
            self._log.close()

    def exit_code(self) -> int | None:
        return self.proc.poll()

    def drain(self, timeout: float = 2.0) -> None:
        """After exit: wait for the reader to have seen every line (the last counts, the last error)."""
        self._reader.join(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (qemu-storage-daemon flushes and closes the image), SIGKILL if it does not go."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.drain()

    def describe_exit(self) -> str:
        """What and why, for the volume's error: exit status or signal, then the stderr tail."""
        rc = self.proc.returncode
        if rc is None:
            why = "still running"
        elif rc < 0:
            try:
                why = f"killed by signal {-rc} ({signal.Signals(-rc).name})"
            except ValueError:
                why = f"killed by signal {-rc}"
        else:
            why = f"exited with status {rc}"
        tail = " | ".join(list(self.tail)[-5:])
        return f"{self.name} {why}" + (f"; stderr: {tail}" if tail else "") + f" (log: {self.log_path})"
